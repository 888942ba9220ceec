"""Expand one Dockerfile word the way BuildKit does (``frontend/dockerfile/shell``'s
``Lex.ProcessWord``): what ``FROM``, ``ARG``, ``ENV`` and flag values such as ``--platform`` and
``--from`` mean after their variables are substituted.

Handled as BuildKit does: single quotes (literal), double quotes (``$`` expands; the escape
character escapes only ``"``, ``$`` and itself), the escape character outside quotes (``\\``,
or the ``# escape=`` directive's), ``$NAME``, ``${NAME}``, ``${NAME:-word}``/``${NAME-word}``,
``${NAME:+word}``/``${NAME+word}``, ``${NAME:?msg}``/``${NAME?msg}``, ``${NAME#glob}``/``##``,
``${NAME%glob}``/``%%``, ``${NAME/glob/repl}``/``//``, nested to any depth (``${A:-$C}``).
A name with no value expands to empty and is reported back, so the caller can warn as
BuildKit's linter does. ``$`` before anything but a name is literal.
"""

from __future__ import annotations

import re
from typing import Mapping

__all__ = ["expand"]


class _ExpandError(Exception):
    """A word BuildKit refuses (``${A``, ``${:}``, ``${A:?unset}``); raised out as ValueError."""


class _Word:
    """One word expanded the way BuildKit's ``shell.Lex`` does, for the subset Dockerfiles use
    in FROM, ARG, ENV and flag values."""

    def __init__(self, text: str, env: Mapping[str, str | None], escape: str):
        self.s, self.i, self.env, self.escape = text, 0, env, escape
        self.unmatched: list[str] = []

    def peek(self) -> str | None:
        return self.s[self.i] if self.i < len(self.s) else None

    def next(self) -> str | None:
        ch = self.peek()
        if ch is not None:
            self.i += 1
        return ch

    def get(self, name: str) -> tuple[str, bool]:
        value = self.env.get(name)
        if value is None:
            self.unmatched.append(name)
            return "", False
        return value, True

    def run(self, stop: str | None = None, raw_escapes: bool = False) -> str:
        out = []
        while (ch := self.peek()) is not None:
            if stop is not None and ch == stop:
                self.i += 1
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
            elif ch == "'":
                out.append(self.single())
            elif ch == '"':
                out.append(self.double())
            else:
                self.i += 1
                if ch == self.escape:
                    if raw_escapes:
                        out.append(ch)
                    ch = self.next()
                    if ch is None:
                        break
                out.append(ch)
        if stop is not None:
            raise _ExpandError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(out)

    def single(self) -> str:
        self.i += 1
        end = self.s.find("'", self.i)
        if end < 0:
            raise _ExpandError("unexpected end of statement while looking for matching single-quote")
        out, self.i = self.s[self.i:end], end + 1
        return out

    def double(self) -> str:
        self.i += 1
        out = []
        while True:
            ch = self.peek()
            if ch is None:
                raise _ExpandError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.i += 1
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            self.i += 1
            if ch == self.escape:
                nxt = self.peek()
                if nxt is None:
                    continue
                if nxt in ('"', "$", self.escape):
                    ch = self.next()
            out.append(ch)

    def name(self) -> str:
        ch = self.peek()
        if ch is None:
            return ""
        if ch.isdigit():
            start = self.i
            while (c := self.peek()) is not None and c.isdigit():
                self.i += 1
            return self.s[start:self.i]
        if ch in "@*#?-$!":
            self.i += 1
            return ch
        start = self.i
        while (c := self.peek()) is not None and (c.isalnum() or c == "_"):
            self.i += 1
        return self.s[start:self.i]

    def dollar(self) -> str:
        self.i += 1
        if self.peek() != "{":
            name = self.name()
            return self.get(name)[0] if name else "$"
        self.i += 1
        if self.peek() is None:
            raise _ExpandError("syntax error: missing '}'")
        if self.peek() in "{}:":
            raise _ExpandError("syntax error: bad substitution")
        name = self.name()
        op = self.next()
        if op is None:
            raise _ExpandError("syntax error: missing '}'")
        if op == "}":
            return self.get(name)[0]
        null_is_unset = op == ":"
        if null_is_unset:
            op = self.next()
        if op in ("-", "+", "?", "#", "%"):
            try:
                word = self.run("}", raw_escapes=op in "#%")
            except _ExpandError:
                raise _ExpandError("syntax error: missing '}'") from None
            value, is_set = self.get(name)
            empty = not is_set or (null_is_unset and value == "")
            if op == "-":
                return word if empty else value
            if op == "+":
                return "" if empty else word
            if op == "?":
                if empty:
                    raise _ExpandError(f"{name}: {word or 'is not allowed to be ' + ('unset' if not is_set else 'empty')}")
                return value
            greedy = word.startswith(op)
            pattern = _glob(word[1:] if greedy else word)
            cuts = range(len(value) + 1)
            if op == "#":  # the shortest (## the longest) matching prefix goes
                for k in (reversed(cuts) if greedy else cuts):
                    if pattern.fullmatch(value[:k]):
                        return value[k:]
            else:  # % the shortest (%% the longest) matching suffix
                for k in (cuts if greedy else reversed(cuts)):
                    if pattern.fullmatch(value[k:]):
                        return value[:k]
            return value
        if op == "/" and not null_is_unset:
            replace_all = self.peek() == "/"
            if replace_all:
                self.i += 1
            try:
                pattern = self.run("/", raw_escapes=True)
                replacement = self.run("}", raw_escapes=True)
            except _ExpandError:
                raise _ExpandError("syntax error: missing '}'") from None
            value, _ = self.get(name)
            return _glob(pattern).sub(lambda _m: replacement, value, count=0 if replace_all else 1)
        raise _ExpandError(f"unsupported modifier ({op}) in substitution")


def _glob(pattern: str) -> re.Pattern:
    """A shell pattern as a regex: ``*`` any run, ``?`` one character, ``\\x`` a literal x
    (BuildKit's convertShellPatternToRegex, which has no ``[...]`` classes either)."""
    return re.compile(wildcard_regex(pattern, one=".", classes=False), re.S)


_WILDCARD = re.compile(r"[*?\[\\]")


def has_wildcard(text: str) -> bool:
    """Whether a path or path component may be a pattern to :func:`wildcard_regex` (``*``,
    ``?``, ``[``, or an escape): what COPY then matches rather than names."""
    return _WILDCARD.search(text) is not None


def wildcard_regex(pattern: str, *, one: str, classes: bool) -> str:
    """A wildcard pattern as a regular expression's text: ``*`` any run of ``one`` (a regex
    atom: ``.`` for a shell pattern, ``[^/]`` for a path component), ``?`` one ``one``, a
    backslash escapes the next character; with ``classes`` (paths: Go's ``filepath.Match``),
    ``[...]`` is one character of the set (``[^...]`` negated and never ``/``; ``[!...]`` is a
    set holding ``!``), and a ``[`` without its ``]`` is itself."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append(one + "*")
        elif ch == "?":
            out.append(one)
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif classes and ch == "[" and "]" in pattern[i + 2:]:
            j = pattern.index("]", i + 2)
            body = pattern[i + 1:j]
            negate = body[:1] == "^"  # Go: only ^ negates; [!a] is the set of ! and a
            body = (body[1:] if negate else body).replace("\\", "\\\\").replace("[", "\\[")
            out.append("[" + ("^/" if negate else "") + body + "]")
            i = j
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def expand(text: str, env: Mapping[str, str | None], *, escape: str = "\\") -> tuple[str, tuple[str, ...]]:
    """``text`` expanded as one word with ``env`` (None: declared, no value), and the names it
    used that have no value. Raises ValueError on a syntax error (``${A``, ``${A:?msg}``)."""
    w = _Word(text, env, escape)
    try:
        out = w.run()
    except _ExpandError as exc:
        raise ValueError(str(exc)) from None
    return out, tuple(dict.fromkeys(w.unmatched))
