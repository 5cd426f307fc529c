"""``rpkirepo publish``: a directory of RPKI objects in, an RRDP repository and an rsync tree out.

See :mod:`rpkirepo.publish.publisher` for the run recipe and docs/architecture.md for the design
that keeps a change of k objects at O(k) work.
"""

from rpkirepo.publish.publisher import PublishOptions, PublishResult, publish

__all__ = ["PublishOptions", "PublishResult", "publish"]
