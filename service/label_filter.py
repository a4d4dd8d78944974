"""Label filters in Google Product Search's grammar: ``key=value`` terms joined by ``AND`` /
``OR``, with parentheses; ``AND`` binds tighter than ``OR``.

    brand=Flora AND (size=400ml OR size=250ml)

A catalog item's labels are ``key=value`` strings; a tag without ``=`` is the label
``tag=<value>`` (:func:`normalize_label`).  Anything outside the grammar raises
:class:`FilterError` with the 0-based character position of the problem, so the API can
answer 422 pointing at it.  The input is bounded (length, terms, nesting) before it is parsed:
a hostile filter costs a few microseconds, never a deep recursion.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MAX_TERMS = 20
MAX_DEPTH = 5
MAX_CHARS = 2000

_WORD = r"""[^\s()="']+"""  # no quoting: keys and values are single words
_TOKEN = re.compile(rf"\s*(?:(?P<paren>[()])|(?P<term>(?P<key>{_WORD})\s*=\s*(?P<value>{_WORD}))"
                    r"|(?P<word>[^\s()]+))")


class FilterError(ValueError):
    """A filter outside the grammar; ``position`` is the 0-based offset of the problem."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"filter: {message} at position {position}")
        self.position = position


@dataclass(frozen=True)
class Term:
    key: str
    value: str

    def matches(self, labels: frozenset[str]) -> bool:
        return f"{self.key}={self.value}" in labels


@dataclass(frozen=True)
class Any_:
    """OR of its parts."""

    parts: tuple[Node, ...]

    def matches(self, labels: frozenset[str]) -> bool:
        return any(p.matches(labels) for p in self.parts)


@dataclass(frozen=True)
class All:
    """AND of its parts."""

    parts: tuple[Node, ...]

    def matches(self, labels: frozenset[str]) -> bool:
        return all(p.matches(labels) for p in self.parts)


Node = Term | Any_ | All


def normalize_label(tag: str) -> str:
    """``k=v`` stays (spaces around ``=`` dropped); a bare tag ``x`` becomes ``tag=x``."""
    key, sep, value = tag.partition("=")
    return f"{key.strip()}={value.strip()}" if sep else f"tag={tag.strip()}"


def labels_of(tags: Iterable[str]) -> frozenset[str]:
    return frozenset(normalize_label(t) for t in tags if t.strip())


@dataclass(frozen=True)
class _Tok:
    kind: str  # "(", ")", "AND", "OR", "term", "end"
    pos: int
    term: Term | None = None
    text: str = ""


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        assert m is not None  # "word" takes any non-blank run that is not a parenthesis
        start = m.start(m.lastgroup or 0)
        if m.group("paren"):
            out.append(_Tok(m.group("paren"), start))
        elif m.group("term"):
            out.append(_Tok("term", start, Term(m.group("key"), m.group("value"))))
        elif m.group("word") in ("AND", "OR"):
            out.append(_Tok(m.group("word"), start))
        else:
            raise FilterError(f"expected key=value, AND, OR or a parenthesis, got "
                              f"{m.group('word')[:40]!r}", start)
        pos = m.end()
    out.append(_Tok("end", len(text)))
    return out


class _Parser:
    def __init__(self, tokens: list[_Tok]) -> None:
        self.toks, self.i = tokens, 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expr(self, depth: int) -> Node:  # expr := conj ("OR" conj)*
        return self._joined("OR", self.conj, Any_, depth)

    def conj(self, depth: int) -> Node:  # conj := atom ("AND" atom)*
        return self._joined("AND", self.atom, All, depth)

    def _joined(self, op: str, part: Callable[[int], Node],
                make: Callable[[tuple[Node, ...]], Node], depth: int) -> Node:
        parts = [part(depth)]
        while self.peek().kind == op:
            self.take()
            parts.append(part(depth))
        return parts[0] if len(parts) == 1 else make(tuple(parts))

    def atom(self, depth: int) -> Node:  # atom := term | "(" expr ")"
        tok = self.take()
        if tok.kind == "term":
            assert tok.term is not None
            return tok.term
        if tok.kind == "(":
            if depth >= MAX_DEPTH:
                raise FilterError(f"parentheses nested deeper than {MAX_DEPTH}", tok.pos)
            node = self.expr(depth + 1)
            close = self.take()
            if close.kind != ")":
                raise FilterError("expected ')'", close.pos)
            return node
        what = "end of filter" if tok.kind == "end" else repr(tok.kind)
        raise FilterError(f"expected key=value or '(', got {what}", tok.pos)


def parse_filter(text: str) -> Node | None:
    """The filter's tree, or None for an empty filter (no restriction)."""
    if len(text) > MAX_CHARS:
        raise FilterError(f"longer than {MAX_CHARS} characters", MAX_CHARS)
    tokens = _tokens(text)
    if len(tokens) == 1:
        return None
    terms = [t for t in tokens if t.kind == "term"]
    if len(terms) > MAX_TERMS:
        raise FilterError(f"more than {MAX_TERMS} terms", terms[MAX_TERMS].pos)
    parser = _Parser(tokens)
    node = parser.expr(0)
    rest = parser.peek()
    if rest.kind != "end":
        raise FilterError(f"expected AND, OR or end of filter, got {rest.kind!r}", rest.pos)
    return node
