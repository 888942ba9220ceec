"""Dockerfile analysis for cross-compilation: stages, their platforms, edges, and what runs where.

Written by hand because dockerfile-parse (the obvious library) reads heredoc bodies as
instructions: a ``FROM`` line inside ``RUN <<EOF`` became a stage (checked). This parser
follows BuildKit's frontend rules where they matter here: the ``# escape=`` directive, line
continuations (comment lines inside them dropped), heredocs (``<<EOF``, ``<<-EOF``, quoted
words, several per line), case-insensitive instructions, global ``ARG``s before the first
``FROM`` (defaults may use earlier ARGs; ``--build-arg`` overrides), ``$VAR``/``${VAR}``/
``${VAR:-x}``/``${VAR:+x}``, ``FROM [--platform=P] IMAGE [AS NAME]``, ``COPY --from`` and
``RUN --mount=...,from=`` edges.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import Iterable, Mapping

import attrs

from .errors import UsageError
from .platforms import Platform, PlatformError, parse

BUILD, TARGET = "build", "target"  # symbolic stage platforms
PLATFORM_ARGS = ("BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT",
                 "TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT")
_B, _T = "\x00BUILD\x00", "\x00TARGET\x00"


@attrs.frozen
class Instruction:
    line: int  # 1-based line where it starts
    keyword: str  # upper case
    args: str  # the rest, continuation lines joined, heredoc bodies removed
    flags: tuple[tuple[str, str], ...] = ()  # leading --name=value flags


@attrs.frozen
class Stage:
    index: int
    name: str | None
    line: int
    base: str  # image reference or stage name, ARGs expanded
    platform: str  # "build" | "target" | a literal platform string
    parent: int | None  # index of the stage it is FROM, if any
    deps: tuple[int, ...]  # stages it copies or mounts from
    runs: int  # RUN instructions in it
    args: tuple[str, ...]  # ARG names it declares

    @property
    def on_build_platform(self) -> bool:
        return self.platform == BUILD


@attrs.frozen
class Analysis:
    path: str
    stages: tuple[Stage, ...]
    target: int  # index of the stage being built
    reachable: tuple[int, ...]  # stages the target needs, the target included, in file order
    global_args: tuple[str, ...]
    digest: str

    def stage(self, i: int) -> Stage:
        return self.stages[i]

    @property
    def used(self) -> tuple[Stage, ...]:
        return tuple(self.stages[i] for i in self.reachable)

    @property
    def cross(self) -> bool:
        """Some stage the target needs runs on $BUILDPLATFORM: the Dockerfile cross-compiles."""
        return any(s.on_build_platform for s in self.used)

    @property
    def target_runs(self) -> int:
        """RUN instructions in target-platform stages (these need the target CPU or QEMU)."""
        return sum(s.runs for s in self.used if s.platform == TARGET)

    @property
    def build_runs(self) -> int:
        return sum(s.runs for s in self.used if s.platform == BUILD)

    @property
    def declared_args(self) -> frozenset[str]:
        out = set(self.global_args)
        for s in self.stages:
            out.update(s.args)
        return frozenset(out)

    def describe(self) -> str:
        """One line: which stages run where."""
        parts = []
        for s in self.used:
            where = {BUILD: "$BUILDPLATFORM", TARGET: "target"}.get(s.platform, s.platform)
            parts.append(f"{s.name or '#' + str(s.index)}@{where}" + (f" ({s.runs} RUN)" if s.runs else ""))
        return ", ".join(parts)


class DockerfileError(UsageError):
    pass


# --- lexing ------------------------------------------------------------------------------------

_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.*?)\s*$")
_HEREDOC = re.compile(r"<<(-?)(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")


def instructions(text: str, path: str = "Dockerfile") -> list[Instruction]:
    lines = text.splitlines()
    escape = "\\"
    i = 0
    # parser directives: only at the very top, before any other line
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i].strip())
        if not m:
            break
        if m.group(1).lower() == "escape":
            if m.group(2) not in ("\\", "`"):
                raise DockerfileError(f"{path}:{i + 1}: escape directive must be \\ or `, got {m.group(2)!r}")
            escape = m.group(2)
        i += 1
    out: list[Instruction] = []
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        start = i + 1
        parts = []
        line = raw.rstrip()
        while line.endswith(escape):
            parts.append(line[:-1])
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].strip().startswith("#")):
                i += 1  # comment and empty lines inside a continuation are dropped
            if i >= len(lines):
                line = ""
                break
            line = lines[i].rstrip()
        parts.append(line)
        i += 1
        logical = " ".join(p.strip() for p in parts if p.strip())
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        if not re.match(r"^[A-Z]+$", keyword):
            raise DockerfileError(f"{path}:{start}: cannot parse {logical[:60]!r}")
        if keyword in ("RUN", "COPY", "ADD"):
            for m in _HEREDOC.finditer(args):
                strip_tabs, word = m.group(1) == "-", m.group(3)
                while i < len(lines):
                    body = lines[i].lstrip("\t") if strip_tabs else lines[i]
                    i += 1
                    if body == word:
                        break
                else:
                    raise DockerfileError(f"{path}:{start}: heredoc <<{word} is never closed")
        flags, rest = _flags(args)
        out.append(Instruction(start, keyword, rest, tuple(flags)))
    return out


def _flags(args: str) -> tuple[list[tuple[str, str]], str]:
    flags = []
    rest = args
    while True:
        m = re.match(r"^--([a-zA-Z][a-zA-Z0-9-]*)(?:=(\S*))?\s*", rest)
        if not m:
            return flags, rest
        flags.append((m.group(1).lower(), m.group(2) or ""))
        rest = rest[m.end():]


# --- expansion ---------------------------------------------------------------------------------

_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def expand(text: str, env: Mapping[str, str | None], *, path: str, line: int, what: str,
           strict: bool = True) -> str:
    """Substitute ARGs. ``strict``: a name no ARG declares is an error (FROM), else empty."""

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(4)
        op, word = m.group(2), m.group(3)
        if name not in env:
            if op == ":-":
                return expand(word, env, path=path, line=line, what=what, strict=strict)
            if not strict:
                return ""
            raise DockerfileError(f"{path}:{line}: {what} uses ${name}, which no ARG before it declares")
        value = env[name]
        if op == ":-":
            return value if value else expand(word, env, path=path, line=line, what=what)
        if op == ":+":
            return expand(word, env, path=path, line=line, what=what) if value else ""
        return value or ""

    return _VAR.sub(sub, text)


# --- analysis ----------------------------------------------------------------------------------

def analyse_text(text: str, *, path: str = "Dockerfile", build_args: Mapping[str, str] = (),
                 target: str | None = None) -> Analysis:
    build_args = dict(build_args)
    insts = instructions(text, path)
    env: dict[str, str | None] = {a: (_B if a == "BUILDPLATFORM" else _T if a == "TARGETPLATFORM" else "")
                                  for a in PLATFORM_ARGS}
    global_args: list[str] = []
    first_from = next((k for k, ins in enumerate(insts) if ins.keyword == "FROM"), None)
    if first_from is None:
        raise DockerfileError(f"{path}:1: no FROM instruction")
    for ins in insts[:first_from]:
        if ins.keyword != "ARG":
            raise DockerfileError(f"{path}:{ins.line}: only ARG may come before the first FROM, not {ins.keyword}")
        for name, default in _arg_decls(ins, path):
            global_args.append(name)
            if name in build_args:
                env[name] = build_args[name]
            elif default is not None:
                env[name] = expand(default, env, path=path, line=ins.line, what="ARG default", strict=False)
            else:
                env[name] = None
    # stages
    raw_stages: list[dict] = []
    names: dict[str, int] = {}
    for ins in insts[first_from:]:
        if ins.keyword == "FROM":
            words = ins.args.split()
            if not words:
                raise DockerfileError(f"{path}:{ins.line}: FROM needs an image")
            name = None
            if len(words) >= 3 and words[-2].lower() == "as":
                name = words[-1].lower()
                words = words[:-2]
            if len(words) != 1:
                raise DockerfileError(f"{path}:{ins.line}: cannot parse FROM {ins.args!r}")
            base = expand(words[0], env, path=path, line=ins.line, what="FROM")
            if not base:
                raise DockerfileError(f"{path}:{ins.line}: FROM {words[0]} expands to nothing; is an ARG missing?")
            platform_flag = dict(ins.flags).get("platform")
            raw_stages.append(dict(index=len(raw_stages), name=name, line=ins.line, base=base,
                                   platform_flag=platform_flag, deps=[], runs=0, args=[]))
            if name:
                names[name] = len(raw_stages) - 1  # a reused name means the later stage from here on
            continue
        st = raw_stages[-1]
        if ins.keyword == "RUN":
            st["runs"] += 1
            for key, value in ins.flags:
                if key == "mount":
                    for item in value.split(","):
                        k, _, v = item.partition("=")
                        if k.strip() == "from" and v:
                            st["deps"].append((v, ins.line))
        elif ins.keyword in ("COPY", "ADD"):
            src = dict(ins.flags).get("from")
            if src:
                st["deps"].append((src, ins.line))
        elif ins.keyword == "ARG":
            st["args"].extend(n for n, _ in _arg_decls(ins, path))
    stages: list[Stage] = []
    seen_names: dict[str, int] = {}
    for st in raw_stages:
        parent = seen_names.get(st["base"].lower())
        flag = st["platform_flag"]
        if flag:
            value = expand(flag, env, path=path, line=st["line"], what="FROM --platform")
            if value == _B:
                platform = BUILD
            elif value == _T:
                platform = TARGET
            else:
                try:
                    platform = str(parse(value))
                except PlatformError as exc:
                    raise DockerfileError(f"{path}:{st['line']}: FROM --platform: {exc}") from None
        elif parent is not None:
            platform = stages[parent].platform
        else:
            platform = TARGET
        deps = []
        for ref, line in st["deps"]:
            ref_l = ref.lower()
            if ref_l in seen_names:
                deps.append(seen_names[ref_l])
            elif ref.isdigit():
                if int(ref) >= st["index"]:
                    raise DockerfileError(f"{path}:{line}: --from={ref} refers to a stage that is not before it")
                deps.append(int(ref))
            # else: an image, not a stage
        stages.append(Stage(st["index"], st["name"], st["line"], st["base"], platform, parent, tuple(deps),
                            st["runs"], tuple(st["args"])))
        if st["name"]:
            seen_names[st["name"]] = st["index"]
    if target is not None:
        t = target.lower()
        if t not in seen_names:
            known = ", ".join(s.name for s in stages if s.name) or "none named"
            raise DockerfileError(f"--target: no stage named {target!r} in {path} (stages: {known})")
        target_index = seen_names[t]
    else:
        target_index = len(stages) - 1
    reach: set[int] = set()
    todo = [target_index]
    while todo:
        k = todo.pop()
        if k in reach:
            continue
        reach.add(k)
        s = stages[k]
        todo.extend(s.deps)
        if s.parent is not None:
            todo.append(s.parent)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Analysis(path, tuple(stages), target_index, tuple(sorted(reach)), tuple(global_args), digest)


def _arg_decls(ins: Instruction, path: str) -> Iterable[tuple[str, str | None]]:
    for word in _split_words(ins.args):
        name, eq, default = word.partition("=")
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise DockerfileError(f"{path}:{ins.line}: bad ARG name {name!r}")
        yield name, (_unquote(default) if eq else None)


def _split_words(text: str) -> list[str]:
    out, cur, quote = [], "", None
    for ch in text:
        if quote:
            cur += ch
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
            cur += ch
        elif ch.isspace():
            if cur:
                out.append(cur)
                cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


@functools.lru_cache(maxsize=16)
def _cached(path: str, mtime_ns: int, build_args: tuple, target: str | None) -> Analysis:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    return analyse_text(text, path=path, build_args=dict(build_args), target=target)


def analyse(request) -> Analysis:
    """The analysis of ``request``'s Dockerfile (cached per file version, args and target)."""
    path = str(request.dockerfile)
    try:
        mtime = Path(path).stat().st_mtime_ns
    except OSError:
        mtime = 0
    return _cached(path, mtime, tuple(request.build_args), request.target)


def platform_of(stage: Stage, build: Platform, target: Platform) -> Platform:
    if stage.platform == BUILD:
        return build
    if stage.platform == TARGET:
        return target
    return parse(stage.platform)
