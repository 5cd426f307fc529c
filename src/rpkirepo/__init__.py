"""rpkirepo: distribute the RPKI: publish, sync, serve and fetch RRDP and rsync repositories."""

__version__ = "0.1.0"
__all__ = ["__version__"]
