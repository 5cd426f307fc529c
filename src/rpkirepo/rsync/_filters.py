"""Include/exclude rules as rsync clients send them, and a matcher that cannot backtrack.

Scope: the rules relying parties send (``+ */``, ``+ *.cer``, ``- *``, ``- .*``, ``-p .~tmp~/``,
``-s``/``-r`` side modifiers, ``!`` to clear).  Merge files (``:``, ``.``), per-dir rules, ``C``,
``e``, ``x``, ``n``, ``w`` and anchoring to the filesystem root (``/`` modifier) are refused:
they make a server read files the client names (the CVE-2026-53786 class) or carry semantics an
RPKI sender never needs.

Matching follows rsync's documented rules (rsync(1) "INCLUDE/EXCLUDE PATTERN RULES"): the first
matching rule wins and no match means include; a trailing ``/`` matches directories only; a
leading ``/`` anchors at the transfer root; a pattern with a ``/`` (other than trailing) or ``**``
is matched against the whole transfer-relative path, starting at any component boundary unless
anchored, otherwise against the last component; ``*`` stops at ``/``, ``**`` does not, ``?`` is
one non-``/``, ``[...]`` is a class (``!``/``^`` negate), ``\\`` escapes, and ``dir/***`` matches
``dir`` and everything below it.

Patterns are compiled to a token list and run as a set-of-states automaton: time is
O(len(pattern) x len(path)) whatever the pattern (``*a*a*a...b`` cannot blow up).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from rpkirepo.errors import LimitExceeded, Reason, RemoteProtocolError

__all__ = ["FilterRule", "FilterSet", "parse_rule"]

# Token kinds.
_LIT: Final = 0
_ANY1: Final = 1  # ?
_STAR: Final = 2  # *   (no /)
_DSTAR: Final = 3  # **  (anything)
_CLASS: Final = 4  # [...]

Token = tuple[int, object]


def _refuse(detail: str, rule: bytes) -> RemoteProtocolError:
    return RemoteProtocolError(Reason.RSYNC_FILTER, detail, rule=rule[:80].decode("latin-1"))


def _compile(pattern: bytes, rule: bytes) -> tuple[Token, ...]:
    out: list[Token] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 0x5C:  # backslash escape
            if i + 1 >= n:
                raise _refuse("pattern ends with a backslash", rule)
            out.append((_LIT, pattern[i + 1]))
            i += 2
        elif c == 0x3F:  # ?
            out.append((_ANY1, None))
            i += 1
        elif c == 0x2A:  # *
            j = i
            while j < n and pattern[j] == 0x2A:
                j += 1
            out.append((_DSTAR if j - i >= 2 else _STAR, None))
            i = j
        elif c == 0x5B:  # [
            j = i + 1
            negate = j < n and pattern[j] in (0x21, 0x5E)
            if negate:
                j += 1
            members: set[int] = set()
            first = True
            while j < n and (pattern[j] != 0x5D or first):
                first = False
                ch = pattern[j]
                if ch == 0x5C and j + 1 < n:
                    j += 1
                    ch = pattern[j]
                if j + 2 < n and pattern[j + 1] == 0x2D and pattern[j + 2] != 0x5D:
                    hi = pattern[j + 2]
                    if hi == 0x5C and j + 3 < n:
                        hi = pattern[j + 3]
                        j += 1
                    members.update(range(ch, hi + 1))
                    j += 3
                else:
                    members.add(ch)
                    j += 1
            if j >= n:
                raise _refuse("unterminated character class", rule)
            out.append((_CLASS, (negate, frozenset(members))))
            i = j + 1
        else:
            out.append((_LIT, c))
            i += 1
    return tuple(out)


def _closure(tokens: tuple[Token, ...], states: set[int]) -> set[int]:
    # A star may match nothing: being before it means being after it too.
    todo = list(states)
    while todo:
        s = todo.pop()
        if s < len(tokens) and tokens[s][0] in (_STAR, _DSTAR) and s + 1 not in states:
            states.add(s + 1)
            todo.append(s + 1)
    return states


def _class_arg(arg: object) -> tuple[bool, frozenset[int]]:
    assert isinstance(arg, tuple)
    return bool(arg[0]), arg[1]


def _match(tokens: tuple[Token, ...], text: bytes) -> bool:
    n = len(tokens)
    states = _closure(tokens, {0})
    for ch in text:
        nxt: set[int] = set()
        for s in states:
            if s >= n:
                continue
            kind, arg = tokens[s]
            if kind == _LIT:
                if arg == ch:
                    nxt.add(s + 1)
            elif kind == _ANY1:
                if ch != 0x2F:
                    nxt.add(s + 1)
            elif kind == _STAR:
                if ch != 0x2F:
                    nxt.add(s)
            elif kind == _DSTAR:
                nxt.add(s)
            else:
                negate, members = _class_arg(arg)
                if ch != 0x2F and ((ch in members) != negate):
                    nxt.add(s + 1)
        if not nxt:
            return False
        states = _closure(tokens, nxt)
    return n in states


@dataclass(frozen=True, slots=True)
class FilterRule:
    """One include (``include=True``) or exclude rule, compiled."""

    include: bool
    pattern: bytes
    negate: bool = False
    dir_only: bool = False
    anchored: bool = False
    whole_path: bool = False
    tokens: tuple[Token, ...] = ()
    #: ``dir/***``: also matches ``dir`` itself (tokens then hold ``dir/**``).
    tokens_self: tuple[Token, ...] | None = None
    #: Fast path for the shapes RPs send, matched against the last component: ``all`` (``*``),
    #: ``suffix`` (``*.cer``), ``prefix`` (``.*``), ``exact`` (no wildcard); ``""``: automaton.
    fast: str = ""
    literal: bytes = b""

    def matches(self, path: bytes, is_dir: bool, budget: list[int] | None = None) -> bool:
        if self.dir_only and not is_dir:
            return self.negate
        if budget is not None:
            # Work units: 1 for a fast-path rule, tokens x characters for the automaton.
            budget[0] -= 1 if self.fast else (len(self.tokens) + 1) * (len(path) + 1)
            if budget[0] < 0:
                raise LimitExceeded(
                    Reason.RSYNC_FILTER,
                    "filter rules too costly for this repository",
                    limit="rsync_max_filter_work",
                )
        hit = self._hit(path)
        return hit != self.negate

    def _hit(self, path: bytes) -> bool:
        if not self.whole_path:
            name = path.rpartition(b"/")[2]
            fast = self.fast
            if fast == "all":
                return True
            if fast == "suffix":
                return name.endswith(self.literal)
            if fast == "prefix":
                return name.startswith(self.literal)
            if fast == "exact":
                return name == self.literal
            return self._one(name)
        if self.anchored:
            return self._one(path)
        start = 0
        while True:
            if self._one(path[start:]):
                return True
            nxt = path.find(b"/", start)
            if nxt < 0:
                return False
            start = nxt + 1

    def _one(self, text: bytes) -> bool:
        if _match(self.tokens, text):
            return True
        return self.tokens_self is not None and _match(self.tokens_self, text)


def parse_rule(raw: bytes, protocol: int) -> FilterRule | None:
    """One rule as sent on the wire; ``None`` for a rule the sender skips (receiver-only).

    The clear rule ``!`` is handled by :class:`FilterSet`.
    """
    if not raw:
        raise _refuse("empty filter rule", raw)
    if b"\x00" in raw:
        raise _refuse("NUL in filter rule", raw)
    include: bool
    mods = b""
    if protocol < 29:
        # Old syntax: "+ pat" includes, "- pat" excludes, anything else is a bare exclude.
        if raw.startswith(b"+ "):
            include, pattern = True, raw[2:]
        elif raw.startswith(b"- "):
            include, pattern = False, raw[2:]
        else:
            include, pattern = False, raw
    else:
        if raw[:1] not in (b"+", b"-"):
            raise _refuse("unsupported filter rule type", raw)
        include = raw[:1] == b"+"
        space = raw.find(b" ")
        if space < 0:
            raise _refuse("filter rule without a pattern", raw)
        mods, pattern = raw[1:space], raw[space + 1 :]
        for m in mods:
            if m not in b"!spr":
                raise _refuse("unsupported filter rule modifier", raw)
        if len(set(mods)) != len(mods):
            raise _refuse("repeated filter rule modifier", raw)
        if b"r" in mods and b"s" in mods:
            raise _refuse("filter rule for both sides", raw)
        if b"r" in mods:
            _check_pattern(pattern, raw)
            return None
    _check_pattern(pattern, raw)
    dir_only = pattern.endswith(b"/")
    body = pattern.rstrip(b"/") if dir_only else pattern
    if not body:
        body = pattern  # "/" alone: let it match nothing useful, as a literal
    anchored = body.startswith(b"/")
    if anchored:
        body = body[1:]
    whole = anchored or b"/" in body or b"**" in body
    tokens_self = None
    if body.endswith(b"/***"):
        tokens_self = _compile(body[:-4], raw)
        body = body[:-1]
    tokens = _compile(body, raw)
    fast, literal = "", b""
    if not whole and tokens_self is None and not any(c in body for c in b"?[\\"):
        stars = body.count(b"*")
        if body.strip(b"*") == b"":
            fast = "all"
        elif stars == 0:
            fast, literal = "exact", body
        elif stars == 1 and body.startswith(b"*"):
            fast, literal = "suffix", body[1:]
        elif stars == 1 and body.endswith(b"*"):
            fast, literal = "prefix", body[:-1]
    return FilterRule(
        include=include,
        pattern=pattern,
        negate=b"!" in mods,
        dir_only=dir_only,
        anchored=anchored,
        whole_path=whole,
        tokens=tokens,
        tokens_self=tokens_self,
        fast=fast,
        literal=literal,
    )


def _check_pattern(pattern: bytes, raw: bytes) -> None:
    if not pattern:
        raise _refuse("empty filter pattern", raw)
    if any(c < 0x20 or c == 0x7F for c in pattern):
        raise _refuse("control character in filter pattern", raw)


@dataclass(frozen=True, slots=True)
class FilterSet:
    """The rules a client sent, in order, after any ``!`` clears."""

    rules: tuple[FilterRule, ...] = ()
    #: The raw rules that built this set: a cache key for encoded file lists.
    key: tuple[bytes, ...] = ()

    @classmethod
    def from_wire(cls, raw_rules: Sequence[bytes], protocol: int) -> FilterSet:
        rules: list[FilterRule] = []
        key: list[bytes] = []
        for raw in raw_rules:
            if raw == b"!":
                rules.clear()
                key.clear()
                continue
            rule = parse_rule(raw, protocol)
            if rule is not None:
                rules.append(rule)
                key.append(raw)
        return cls(tuple(rules), tuple(key))

    def included(self, path: bytes, is_dir: bool, budget: list[int] | None = None) -> bool:
        """Whether ``path`` (relative to the transfer root) passes; no match means included.
        ``budget`` (a one-element list) is decremented by the matching work done, and
        :class:`LimitExceeded` is raised when it runs out."""
        for rule in self.rules:
            if rule.matches(path, is_dir, budget):
                return rule.include
        return True
