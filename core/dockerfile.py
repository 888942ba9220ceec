"""Dockerfile analysis for planning: stages, the platform each runs on, edges, what runs where.

Lexing is BuildKit's own: the ``dockerfile`` package wraps moby/buildkit's Go parser (parser
directives, line continuations, comments, heredocs recognised only as whole shell words and
never in JSON form, a leading UTF-8 BOM, any whitespace between words, flag values
shell-unquoted). This module keeps only the semantics on top, after BuildKit's
``dockerfile2llb``:

- ``ARG`` scoping: ARGs before the first ``FROM`` are global and visible in ``FROM`` lines (a
  ``--build-arg`` overrides a declared one's default); inside a stage an ``ARG`` without a
  default takes the global value; ``ENV`` values are visible to the stage and the stages built
  ``FROM`` it. The automatic platform ARGs (``BUILDPLATFORM``, ``BUILDOS``, ``BUILDARCH``,
  ``BUILDVARIANT``, ``TARGET*``) are set in the global scope.
- word expansion as BuildKit's ``shell.Lex.ProcessWord`` (:mod:`archfleet.shellword`:
  quotes, ``$VAR``, ``${VAR:-x}``, ``${VAR:+x}``, nested ``${A:-$C}``, ...). A name used in
  ``FROM`` that no ARG declares expands to empty with a warning (BuildKit's lint
  ``UndefinedArgInFrom``), not an error.
- the stage graph: ``FROM <stage>`` (the last stage of that name so far; the value expanded
  with the global ARGs, so ``FROM build-$TARGETARCH`` picks a stage per target),
  ``COPY --from=<name|index|image>`` and ``RUN --mount=...,from=<name|image>`` (looked up once
  every stage is known: a name used twice means its last stage). As in BuildKit, ``--from``
  and a mount's ``from=`` are never expanded: a variable there is an error (dockerfile2llb's
  "variable expansion is not supported for --from"), a stage copying from itself is a
  circular dependency, and one copying from a later stage fails when it is built. The
  closure of the ``--target`` stage.
- the platform of each stage: ``$BUILDPLATFORM`` however it is spelled (``linux/$BUILDARCH``,
  ``$BUILDOS/$BUILDARCH``), the target, or a literal platform (``--platform=linux/amd64``);
  see :class:`Stage`. :meth:`Analysis.placement` says how the stages one target needs run on
  one node: natively, under QEMU, or not at all.

Errors are :class:`DockerfileError` (a :class:`~archfleet.errors.UsageError`, exit 2), one line
naming ``file:line``.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import attrs

from .errors import UsageError
from .platforms import Platform, PlatformError, parse
from .shellword import expand


@contextlib.contextmanager
def _sigint_held():
    """SIGINT blocked in this thread (the main thread: the one Python runs signal handlers in)
    while Go code of the parser runs; a SIGINT that arrives meanwhile is delivered when the block
    ends, back in Python, to the handler in place then. Other threads: nothing to do."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _import_parser():
    """The ``dockerfile`` package (BuildKit's parser, a Go shared library), imported with SIGINT
    held (:func:`_sigint_held`): a Ctrl-C arriving while the Go runtime starts crashed the
    process with SIGSEGV (11 of 400 interrupted imports; none of 400 with the signal blocked)."""
    with _sigint_held():
        import dockerfile
    return dockerfile


_loaded = None


def _parser():
    """The ``dockerfile`` package, imported at the first parse (:func:`_import_parser`): a Go
    runtime started in a process cannot be forked (``archfleet server`` forks a loaded process
    for each command, :mod:`archfleet.server`), so it starts in the process that parses."""
    global _loaded
    if _loaded is None:
        _loaded = _import_parser()
    return _loaded


class _GoParseError(Exception):
    """Stands for the parser's ``GoParseError`` in ``except`` clauses before it is loaded (no
    parse has failed before the first parse)."""


def _go_parse_error() -> type[Exception]:
    return _loaded.GoParseError if _loaded is not None else _GoParseError


def __getattr__(name: str):
    if name == "_buildkit":  # the package itself (tests)
        return _parser()
    if name == "INSTRUCTIONS":
        return _instruction_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=1)
def _instruction_names() -> frozenset[str]:
    """Every instruction keyword BuildKit's parser knows, upper case."""
    return frozenset(c.upper() for c in _parser().all_cmds())


def parse_string(text: str) -> tuple:
    """BuildKit's parser on ``text`` (``dockerfile.parse_string``: its commands; raises its
    ``GoParseError``), with SIGINT held (:func:`_sigint_held`). A Ctrl-C that arrived while the
    Go code ran was lost: no KeyboardInterrupt, and the build went on and pushed, exit 0 (1-3 of
    100 builds interrupted ~0.1 s after start, while their Dockerfile was read; found by the
    fresh-user helper). Every parse goes through here."""
    parser = _parser()
    with _sigint_held():
        return parser.parse_string(text)


BUILD, TARGET = "build", "target"  # the symbolic stage platforms (Stage.platform)
PLATFORM_ARGS = ("BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT",
                 "TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT")

# Platforms the symbolic analysis tries a stage's --platform expression with, to tell which
# platform it names whatever the node: every architecture a build node is likely to have (one
# with a variant among them), and a spread of targets besides the requested ones.
_BUILD_PROBES = tuple(parse(p) for p in ("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x",
                                         "linux/ppc64le", "linux/riscv64", "linux/386"))
_TARGET_PROBES = tuple(parse(p) for p in ("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x"))
# Stand-ins for the automatic platform ARGs in the symbolic pass (NUL cannot occur in a file
# BuildKit reads as text); shown back as ``$NAME``.
_SENTINEL = {name: f"\x00{name}\x00" for name in PLATFORM_ARGS}
_SENTINEL_RE = re.compile("\x00(" + "|".join(PLATFORM_ARGS) + ")\x00")


class DockerfileError(UsageError):
    """The Dockerfile cannot be built: one line, ``file:line: what``."""



def mount_fields(spec: str) -> list[tuple[str, str | None]]:
    """A ``RUN --mount=`` value's fields as (key lowercased, value or None for a bare key), read
    as BuildKit reads it (``instructions.parseMount``: CSV, so a quoted field may hold a comma)."""
    try:
        fields = next(csv.reader([spec]))
    except (csv.Error, StopIteration):
        fields = spec.split(",")
    out = []
    for part in fields:
        key, eq, value = part.partition("=")
        out.append((key.strip().lower(), value.strip() if eq else None))
    return out

@attrs.frozen
class Instruction:
    """One instruction as BuildKit's parser returns it."""

    line: int  # 1-based line where it starts
    keyword: str  # upper case
    words: tuple[str, ...]  # the arguments: shell words (FROM, ARG, COPY...), the command (RUN), JSON items
    flags: tuple[tuple[str, str | None], ...] = ()  # leading --name[=value] flags, values unquoted
    json: bool = False

    def flag(self, name: str) -> str | None:
        """The last value of ``--name`` (BuildKit keeps the last), None if absent."""
        out = None
        for key, value in self.flags:
            if key == name:
                out = value
        return out


@attrs.frozen
class Stage:
    """One ``FROM`` and the instructions up to the next, as the analysis sees it."""

    index: int
    name: str | None
    line: int
    base: str  # image reference or stage name, ARGs expanded (an automatic platform ARG shown as $NAME)
    # BUILD: the build node's own platform ($BUILDPLATFORM, linux/$BUILDARCH, ...); TARGET: the
    # platform being built; a literal platform ("linux/amd64") when the stage is pinned; else
    # the --platform expression as written ("linux/$TARGETARCH" when a target has a variant
    # that spelling loses): a platform that depends on the node and target, see
    # Analysis.platform_of.
    platform: str
    parent: int | None  # index of the stage it is FROM, if any
    deps: tuple[int, ...]  # stages it copies or mounts from
    runs: int  # RUN instructions in it
    args: tuple[str, ...]  # ARG names it declares
    platform_expr: str | None = None  # the --platform value as written, None without the flag

    @property
    def on_build_platform(self) -> bool:
        """True when the stage runs on ``$BUILDPLATFORM`` (the build node's own platform)."""
        return self.platform == BUILD

    @property
    def pinned(self) -> bool:
        """On a platform of its own: neither $BUILDPLATFORM nor the target."""
        return self.platform not in (BUILD, TARGET)

    @property
    def label(self) -> str:
        """The stage's name for people: its ``AS`` name, else ``#<index>``."""
        return self.name or f"#{self.index}"


@attrs.frozen
class Placement:
    """How the stages one target platform needs would run on one node.

    BuildKit runs each stage on its own platform; copying files out of a stage or pulling its
    base executes nothing, so only stages that RUN something need their CPU natively or a QEMU
    handler. ``build`` is the node's own platform (what ``$BUILDPLATFORM`` means there).
    """

    target: Platform
    build: Platform | None
    native_runs: int = 0  # RUN instructions at the node's native speed
    emulated: tuple[tuple[Platform, int], ...] = ()  # (platform, RUN count) that need QEMU
    missing: tuple[str, ...] = ()  # one line per stage the node can neither run nor emulate
    # some stage runs on the node's own platform rather than the target's: a $BUILDPLATFORM
    # stage, or one pinned to a platform the node runs natively (it behaves the same)
    cross: bool = False

    @property
    def possible(self) -> bool:
        """True when the node can run every RUN of the build (natively or under QEMU)."""
        return not self.missing

    @property
    def emulated_runs(self) -> int:
        """RUN instructions that run under QEMU on this node."""
        return sum(n for _, n in self.emulated)

    @property
    def emulated_share(self) -> float:
        """The fraction of RUN work under QEMU (0 when nothing RUNs)."""
        total = self.native_runs + self.emulated_runs
        return self.emulated_runs / total if total else 0.0

    def how(self) -> str:
        """One phrase: what runs under QEMU, or that nothing does."""
        if not self.emulated:
            return "no emulation needed"
        parts = []
        for p, n in self.emulated:
            where = "target RUN" if p == self.target else f"RUN on {p}"
            parts.append(f"{n} {where} under qemu-{p.qemu_arch}")
        return ", ".join(parts)

    def why_not(self) -> str:
        """One line saying which stage the node cannot run and on what platform (empty when possible)."""
        return "; ".join(self.missing)


@attrs.frozen
class Analysis:
    """A Dockerfile's stages and which of them the build target needs, with each stage's
    symbolic platform (BUILD, TARGET, literal). :meth:`placement` and :meth:`platform_of`
    evaluate it again for one node and target (cached), which is exact where a stage name or
    platform depends on ``$TARGETARCH`` and friends."""

    path: str
    stages: tuple[Stage, ...]
    target: int  # index of the stage being built
    reachable: tuple[int, ...]  # stages the target needs, the target included, in file order
    global_args: tuple[str, ...]
    digest: str
    warnings: tuple[str, ...] = ()  # one line each, BuildKit would warn too (an undeclared ARG in FROM)
    # what a concrete evaluation (one node, one target) needs again
    instructions: tuple[Instruction, ...] = attrs.field(default=(), repr=False)
    build_args: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    target_name: str | None = None
    escape: str = "\\"

    def stage(self, i: int) -> Stage:
        """The stage at index ``i`` (0-based, file order)."""
        return self.stages[i]

    @property
    def used(self) -> tuple[Stage, ...]:
        """The stages the target needs (the target included), in file order."""
        return tuple(self.stages[i] for i in self.reachable)

    @property
    def cross(self) -> bool:
        """Some stage the target needs runs on $BUILDPLATFORM: the Dockerfile cross-compiles."""
        return any(s.on_build_platform for s in self.used)

    @property
    def can_cross(self) -> bool:
        """The ``cross`` strategy can offer this on some node: a stage the target needs runs on
        ``$BUILDPLATFORM``, or is pinned to a platform of its own (on a node of that platform it
        runs natively, as a ``$BUILDPLATFORM`` stage does)."""
        return self.cross or bool(self.pinned)

    @property
    def target_runs(self) -> int:
        """RUN instructions in target-platform stages (these need the target CPU or QEMU)."""
        return sum(s.runs for s in self.used if s.platform == TARGET)

    @property
    def build_runs(self) -> int:
        """RUN instructions in build-platform stages (they run natively on any node)."""
        return sum(s.runs for s in self.used if s.platform == BUILD)

    @property
    def pinned(self) -> tuple[Stage, ...]:
        """Used stages on a platform of their own (``--platform=linux/amd64``)."""
        return tuple(s for s in self.used if s.pinned)

    @property
    def declared_args(self) -> frozenset[str]:
        """Every ARG name the Dockerfile declares (global and per stage)."""
        out = set(self.global_args)
        for s in self.stages:
            out.update(s.args)
        return frozenset(out)

    def describe(self) -> str:
        """One line: which stages run where."""
        parts = []
        for s in self.used:
            where = {BUILD: "$BUILDPLATFORM", TARGET: "target"}.get(s.platform, s.platform)
            parts.append(f"{s.label}@{where}" + (f" ({s.runs} RUN)" if s.runs else ""))
        return ", ".join(parts)

    def platform_of(self, stage: Stage | int, build: Platform, target: Platform) -> Platform:
        """The platform ``stage`` runs on when ``build`` builds ``target``. Raises
        DockerfileError when its --platform does not name a platform there."""
        index = stage if isinstance(stage, int) else stage.index
        got = _concrete(self, build, target).platforms[index]
        if isinstance(got, str):
            raise DockerfileError(got)
        return got

    def concrete(self, build: Platform, target: Platform) -> tuple[tuple[int, ...], tuple[Platform | str, ...]]:
        """When ``build`` builds ``target``: the stages the target needs (indices, file order)
        and the platform each stage runs on (or why its --platform names none there)."""
        conc = _concrete(self, build, target)
        return conc.reachable, conc.platforms

    def placement(self, target: Platform, native: Sequence[Platform], emulated: Sequence[Platform]) -> Placement:
        """How the stages ``target`` needs run on a node that runs ``native`` (its own platform
        first) and emulates ``emulated``; see :class:`Placement`."""
        if not native:
            return Placement(target, None, missing=("its own platform is unknown",))
        build = native[0]
        try:
            conc = _concrete(self, build, target)
        except DockerfileError as exc:  # only for this node's platform or this target
            return Placement(target, build, missing=(str(exc),))
        native_runs = 0
        emulated_runs: dict[Platform, int] = {}
        missing: list[str] = []
        cross = False
        for i in conc.reachable:
            s = self.stages[i]
            got = conc.platforms[i]
            if isinstance(got, str):
                if s.runs:
                    missing.append(got)
                continue
            if s.platform == BUILD or (s.platform != TARGET and got != target and got in native):
                cross = True
            if not s.runs:
                continue
            if got in native:
                native_runs += s.runs
            elif got in emulated:
                emulated_runs[got] = emulated_runs.get(got, 0) + s.runs
            else:
                missing.append(f"stage {s.label} (line {s.line}) RUNs on {got}, which this node neither runs "
                               f"natively nor emulates (no qemu-{got.qemu_arch} handler; `archfleet binfmt --install {got}`)")
        return Placement(target, build, native_runs, tuple(emulated_runs.items()), tuple(missing), cross)


# --- reading and lexing (BuildKit's parser) -------------------------------------------------------

def read(path: str | Path) -> str:
    """The text of the Dockerfile at ``path``. DockerfileError when it cannot be read or is not
    UTF-8 (BuildKit reads Dockerfiles as UTF-8 text)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DockerfileError(f"{path}: cannot read: {exc.strerror}") from None
    return decode(raw, str(path))


def decode(raw: bytes, path: str = "Dockerfile") -> str:
    """``raw`` (a Dockerfile's bytes) as text. Raises :class:`DockerfileError` naming ``path``, the line and the byte offset when it is not UTF-8 (a BOM is BuildKit's to strip)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DockerfileError(f"{path}:{line}: not UTF-8 (byte {exc.start} is 0x{raw[exc.start]:02x}); "
                              "save the Dockerfile as UTF-8") from None


def instructions(text: str, path: str = "Dockerfile") -> tuple[Instruction, ...]:
    """The instructions of ``text``, parsed by BuildKit's own parser. Unknown instructions and
    parser errors are a DockerfileError naming the line."""
    return _instructions(text, path)


@functools.lru_cache(maxsize=32)
def _instructions(text: str, path: str) -> tuple[Instruction, ...]:
    try:
        commands = parse_string(text)
    except _go_parse_error() as exc:
        message = str(exc)
        if message == "file with no instructions":
            raise DockerfileError(f"{path}:1: no FROM instruction (the file has no instructions)") from None
        raise DockerfileError(f"{path}:{_error_line(text, message)}: {message}") from None
    out = []
    for c in commands:
        if c.cmd is None:  # a lone line continuation at the end of the file
            raise DockerfileError(f"{path}:{c.start_line}: a line continuation with no instruction after it")
        keyword = c.cmd.upper()
        if keyword not in _instruction_names():
            raise DockerfileError(f"{path}:{c.start_line}: unknown instruction {c.cmd!r}")
        flags = []
        for f in c.flags:
            name, eq, value = f[2:].partition("=") if f.startswith("--") else (f, "", "")
            flags.append((name.lower(), value if eq else None))
        out.append(Instruction(c.start_line, keyword, tuple(c.value), tuple(flags), bool(c.json)))
    return tuple(out)


def _error_line(text: str, message: str) -> int:
    """The line a parser error belongs to (BuildKit's message does not say which).

    A directive error is on the first line whose prefix of the file fails that way. Any other
    error is on the last line from which the rest of the file (behind the same directives)
    still fails that way: a binary search, so an unterminated heredoc in a long file costs a
    dozen parses, not one per line."""
    lines = text.splitlines(keepends=True)

    def fails(part: str) -> bool:
        try:
            parse_string(part)
        except _go_parse_error() as exc:
            return str(exc) == message
        return False

    if "directive" in message or "escape token" in message:
        return next((k for k in range(1, min(len(lines), 64) + 1) if fails("".join(lines[:k]))), 1)
    head = 0  # the directive lines, kept in front of every tail so the escape character holds
    while head < len(lines) and re.match(r"^\ufeff?#\s*[a-zA-Z][a-zA-Z0-9]*\s*=", lines[head]):
        head += 1
    lo, hi = head + 1, len(lines)
    while lo < hi:  # the largest line whose tail still fails (the whole file does)
        mid = (lo + hi + 1) // 2
        if fails("".join(lines[:head] + lines[mid - 1:])):
            lo = mid
        else:
            hi = mid - 1
    return max(lo, 1)


_PROBE = "archfleet_escape_probe"


def _escape_token(text: str) -> str:
    """The escape character BuildKit's parser uses for ``text``: ``\\`` unless a ``# escape=``
    parser directive made it the backtick (the only two it accepts). Asked of the parser itself,
    so its directive rules hold (where directives end, which it knows): two probe lines are
    appended, the first ending in a backtick; the second stands alone as the last instruction
    only when the backtick escapes nothing (also when ``text`` ends in a continuation, which
    swallows the first). Call it on text the parser accepts."""
    probe = parse_string(f"{text}\nARG {_PROBE}1`\nARG {_PROBE}2\n")
    return "\\" if probe and probe[-1].value == (f"{_PROBE}2",) else "`"


# --- the semantic pass ----------------------------------------------------------------------------

_ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9._-]*$")


@attrs.frozen
class _Row:
    """A stage as one evaluation sees it (symbolic or for one node and target)."""

    index: int
    name: str | None
    line: int
    base: str
    platform_expr: str | None
    parent: int | None
    deps: tuple[int, ...]
    runs: int
    args: tuple[str, ...]


@attrs.frozen
class _Pass:
    global_args: tuple[str, ...]
    rows: tuple[_Row, ...]
    target: int
    reachable: tuple[int, ...]
    warnings: tuple[str, ...]


def _word(text: str, env: Mapping[str, str | None], escape: str, where: str) -> tuple[str, tuple[str, ...]]:
    try:
        return expand(text, env, escape=escape)
    except ValueError as exc:
        raise DockerfileError(f"{where}: {exc}") from None


def _globals(insts: Sequence[Instruction], path: str, build_args: Mapping[str, str],
             auto: Mapping[str, str], escape: str) -> tuple[dict[str, str | None], list[str]]:
    """The global scope: the automatic platform ARGs, then each ARG before the first FROM (a
    --build-arg overrides a declared one; a default may use the ARGs before it)."""
    env: dict[str, str | None] = dict(auto)
    names: list[str] = []
    for ins in insts:
        if ins.keyword != "ARG":
            raise DockerfileError(f"{path}:{ins.line}: only ARG may come before the first FROM, not {ins.keyword}")
        for name, raw in _arg_decls(ins, path):
            names.append(name)
            if name in build_args and name not in auto:
                env[name] = build_args[name]
            elif raw is not None:
                env[name] = _word(raw, env, escape, f"{path}:{ins.line}: ARG {name}")[0]
            elif name not in auto:
                env[name] = None
    return env, names


def _evaluate(insts: Sequence[Instruction], path: str, build_args: Mapping[str, str], target_name: str | None,
              auto: Mapping[str, str], escape: str) -> _Pass:
    """Stages, edges and the target's closure, with the automatic platform ARGs set to ``auto``
    (concrete values, or the symbolic stand-ins)."""
    first = next((k for k, ins in enumerate(insts) if ins.keyword == "FROM"), None)
    if first is None:
        raise DockerfileError(f"{path}:{insts[0].line if insts else 1}: no FROM instruction")
    genv, global_args = _globals(insts[:first], path, build_args, auto, escape)
    warnings: list[str] = []
    rows: list[dict] = []
    names: dict[str, int] = {}  # stage names defined so far (a reused name means the later stage)

    def register_last() -> None:
        if rows and rows[-1]["name"]:
            names[rows[-1]["name"]] = rows[-1]["index"]

    # what --from and a mount's from= name: BuildKit looks them up once every stage is known,
    # so a name used twice means its last stage (FROM <name> means the last one so far)
    every_name: dict[str, int] = {}
    for k, ins in enumerate(i for i in insts[first:] if i.keyword == "FROM"):
        if len(ins.words) == 3 and ins.words[1].lower() == "as":
            every_name[ins.words[2].lower()] = k

    def refs(value: str, line: int, what: str, index_ok: bool = True) -> list[int]:
        """Stages ``value`` names: a stage name, an index (``COPY --from`` only), else an image.
        One not before the current stage is an error, as in BuildKit: the stage itself is a
        circular dependency, and a later one has not been built when this one copies from it."""
        here = len(rows) - 1
        k = every_name.get(value.lower())
        if k is None and index_ok and value.isdigit():
            k = int(value)
        if k is None:
            return []  # an image
        if k == here:
            raise DockerfileError(f"{path}:{line}: {what}={value}: circular dependency: it names the stage it is in "
                                  "(a stage name used twice means its last stage)")
        if k > here:  # an error only if this stage is built (BuildKit fails then, not before)
            rows[here]["broken"].append(f"{path}:{line}: {what}={value} refers to a stage that is not before it")
            return []
        return [k]

    def bases(value: str) -> list[int]:
        """The stages a symbolic ``FROM`` value could name for some platform (``build-$TARGETARCH``)."""
        rx = re.compile(".*".join(re.escape(p) for p in _SENTINEL_RE.split(value)[::2]), re.S)
        return sorted(i for n, i in names.items() if rx.fullmatch(n))

    for ins in insts[first:]:
        where = f"{path}:{ins.line}"
        if ins.keyword == "FROM":
            register_last()
            words = list(ins.words)
            name = None
            if len(words) == 3 and words[1].lower() == "as":
                name = words[2].lower()
                if not _STAGE_NAME.match(name):
                    raise DockerfileError(f"{where}: invalid stage name {words[2]!r}: it must start with a letter "
                                          "and hold only letters, digits, '-', '_' and '.'")
            elif len(words) != 1:
                raise DockerfileError(f"{where}: FROM takes IMAGE [AS NAME], got {' '.join(words)!r}")
            base, unmatched = _word(words[0], genv, escape, where)
            for var in unmatched:
                if var not in global_args:
                    warnings.append(f"{where}: FROM argument {var!r} is not declared by an ARG before the first "
                                    "FROM; it expands to empty (as in BuildKit)")
            if not base:
                raise DockerfileError(f"{where}: FROM {words[0]} expands to nothing; is an ARG or --build-arg missing?")
            platform_expr = ins.flag("platform")
            if ("platform", None) in ins.flags or platform_expr == "":
                raise DockerfileError(f"{where}: FROM --platform needs a value")
            parent = names.get(base.lower())
            deps: list[int] = []
            if parent is None and _SENTINEL_RE.search(base):  # symbolic pass: any stage a platform picks
                deps = bases(base)
            rows.append(dict(index=len(rows), name=name, line=ins.line, base=base, platform_expr=platform_expr,
                             parent=parent, deps=deps, runs=0, args=[], broken=[]))
            continue
        st = rows[-1]
        if ins.keyword == "ARG":
            for name, raw in _arg_decls(ins, path):
                st["args"].append(name)
                if raw is not None:  # its value matters to no stage edge: only its syntax is checked
                    _word(raw, {}, escape, f"{where}: ARG {name}")
        elif ins.keyword == "ENV":
            for k in range(0, len(ins.words) - 1, 2):
                _word(ins.words[k + 1], {}, escape, f"{where}: ENV {ins.words[k]}")
        elif ins.keyword == "ADD" and ins.flag("from") is not None:
            raise DockerfileError(f"{where}: ADD has no --from flag (BuildKit: unknown flag: from); use COPY --from")
        elif ins.keyword == "COPY":
            src = ins.flag("from")
            if src is not None and _word(src, {}, escape, f"{where}: --from")[0] != src:
                # dockerfile2llb's toCommand: a --from that expansion would change is refused
                raise DockerfileError(
                    f"{where}: COPY --from={src}: BuildKit does not expand variables in --from; name the stage "
                    f"with a global ARG instead (ARG before the first FROM, then FROM {src} AS <name>, and "
                    "COPY --from=<name>)")
            if src:  # empty: BuildKit copies from the build context
                st["deps"].extend(refs(src, ins.line, "--from"))
        elif ins.keyword == "RUN":
            st["runs"] += 1
            for key, value in ins.flags:
                if key == "mount" and value:
                    for k, v in mount_fields(value):
                        if k != "from" or not v:
                            continue
                        if re.search(r"\$.", v):  # instructions.parseMount refuses it
                            raise DockerfileError(
                                f"{where}: RUN --mount from={v}: BuildKit does not expand variables in a mount's "
                                "from; name the stage with a global ARG instead (FROM "
                                f"{v} AS <name>, then from=<name>)")
                        st["deps"].extend(refs(v, ins.line, "--mount from", index_ok=False))
    register_last()
    if target_name is not None:
        t = target_name.lower()
        if t not in names:
            known = ", ".join(r["name"] for r in rows if r["name"]) or "none named"
            raise DockerfileError(f"--target: no stage named {target_name!r} in {path} (stages: {known})")
        target = names[t]
    else:
        target = len(rows) - 1
    reach: set[int] = set()
    todo = [target]
    while todo:
        k = todo.pop()
        if k in reach:
            continue
        reach.add(k)
        todo.extend(rows[k]["deps"])
        if rows[k]["parent"] is not None:
            todo.append(rows[k]["parent"])
    for k in sorted(reach):
        if rows[k]["broken"]:
            raise DockerfileError(rows[k]["broken"][0])
    out = tuple(_Row(r["index"], r["name"], r["line"], r["base"], r["platform_expr"], r["parent"],
                     tuple(dict.fromkeys(r["deps"])), r["runs"], tuple(r["args"])) for r in rows)
    return _Pass(tuple(global_args), out, target, tuple(sorted(reach)),
                 tuple(dict.fromkeys(warnings)))


def _arg_decls(ins: Instruction, path: str) -> Iterable[tuple[str, str | None]]:
    if not ins.words:
        raise DockerfileError(f"{path}:{ins.line}: ARG needs a name")
    for word in ins.words:
        name, eq, default = word.partition("=")
        if not _ARG_NAME.match(name):
            raise DockerfileError(f"{path}:{ins.line}: bad ARG name {name!r}")
        yield name, (default if eq else None)


def _auto(build: Platform, target: Platform) -> dict[str, str]:
    out = {}
    for prefix, p in (("BUILD", build), ("TARGET", target)):
        out.update({f"{prefix}PLATFORM": str(p), f"{prefix}OS": p.os, f"{prefix}ARCH": p.architecture,
                    f"{prefix}VARIANT": p.variant})
    return out


def _platform_value(expr: str, insts, path, build_args, escape, line, build: Platform,
                    target: Platform) -> Platform | str:
    """The platform ``expr`` names when ``build`` builds ``target``, or why it names none."""
    first = next(k for k, ins in enumerate(insts) if ins.keyword == "FROM")
    genv, _ = _globals(insts[:first], path, build_args, _auto(build, target), escape)
    value, _ = _word(expr, genv, escape, f"{path}:{line}: FROM --platform")
    if not value:
        return f"{path}:{line}: FROM --platform={expr} expands to nothing"
    try:
        return parse(value)
    except PlatformError as exc:
        return f"{path}:{line}: FROM --platform={expr}: {exc}"


def _classify(row: _Row, insts, path, build_args, escape, targets: Sequence[Platform]) -> str:
    """BUILD, TARGET, a literal platform, or the expression itself, by trying ``row``'s
    --platform with every probe build platform and target."""
    expr = row.platform_expr
    seen: dict[tuple[Platform, Platform], Platform] = {}
    for t in dict.fromkeys(tuple(targets) + _TARGET_PROBES):
        failures = []
        for b in _BUILD_PROBES:
            got = _platform_value(expr, insts, path, build_args, escape, row.line, b, t)
            if isinstance(got, str):
                failures.append(got)
            else:
                seen[(b, t)] = got
        if len(failures) == len(_BUILD_PROBES) and t in targets:
            raise DockerfileError(failures[0] + (f" (building {t})" if "TARGET" in expr else ""))
    if len(seen) < len(_BUILD_PROBES) * len(dict.fromkeys(tuple(targets) + _TARGET_PROBES)):
        return expr  # names a platform on some nodes only: resolved per node
    if all(got == b for (b, _), got in seen.items()):
        return BUILD
    values = set(seen.values())
    if len(values) == 1:
        return str(values.pop())
    if all(got == t for (_, t), got in seen.items()):
        return TARGET
    return expr


def _display(text: str) -> str:
    return _SENTINEL_RE.sub(lambda m: "$" + m.group(1), text)


def analyse_text(text: str, *, path: str = "Dockerfile", build_args: Mapping[str, str] = (),
                 target: str | None = None, platforms: Sequence[Platform] = ()) -> Analysis:
    """The analysis of Dockerfile ``text``. ``platforms``: the requested targets; a stage's
    --platform that names no platform for one of them, on any build node, is an error (without
    ``platforms``, amd64, arm64, arm/v7 and s390x stand in for them)."""
    build_args = dict(build_args)
    insts = instructions(text, path)
    escape = _escape_token(text)
    sym = _evaluate(insts, path, build_args, target, _SENTINEL, escape)
    targets = tuple(platforms) or _TARGET_PROBES
    stages: list[Stage] = []
    for r in sym.rows:
        if r.platform_expr is not None:
            platform = _classify(r, insts, path, build_args, escape, targets)
        elif r.parent is not None:
            platform = stages[r.parent].platform
        else:
            platform = TARGET
        stages.append(Stage(r.index, r.name, r.line, _display(r.base), platform, r.parent, r.deps, r.runs, r.args,
                            r.platform_expr))
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
    return Analysis(path, tuple(stages), sym.target, sym.reachable, sym.global_args, digest, sym.warnings,
                    insts, tuple(sorted(build_args.items())), target, escape)


@attrs.frozen
class _Concrete:
    platforms: tuple[Platform | str, ...]  # per stage: its platform, or why it has none
    reachable: tuple[int, ...]


@functools.lru_cache(maxsize=512)
def _concrete(analysis: Analysis, build: Platform, target: Platform) -> _Concrete:
    """``analysis`` evaluated for one build platform and target: the stage each --from picks
    (``COPY --from=build-$TARGETARCH``) and the platform each stage runs on."""
    a = analysis
    args = dict(a.build_args)
    conc = _evaluate(a.instructions, a.path, args, a.target_name, _auto(build, target), a.escape)
    platforms: list[Platform | str] = []
    for r in conc.rows:
        if r.platform_expr is not None:
            platforms.append(_platform_value(r.platform_expr, a.instructions, a.path, args, a.escape, r.line,
                                             build, target))
        elif r.parent is not None:
            platforms.append(platforms[r.parent])
        else:
            platforms.append(target)
    return _Concrete(tuple(platforms), conc.reachable)


# --- the request's Dockerfile ---------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _cached(path: str, stamp: tuple, build_args: tuple, target: str | None, platforms: tuple) -> Analysis:
    text = read(path)
    analysis = analyse_text(text, path=path, build_args=dict(build_args), target=target, platforms=platforms)
    for line in analysis.warnings:  # once per Dockerfile version, as BuildKit prints its lint warnings
        sys.stderr.write(f"archfleet: warning: {line}\n")
    return analysis


def analyse(request, platform: Platform | None = None) -> Analysis:
    """The analysis of ``request``'s Dockerfile, or of ``platform``'s own when the request gives
    platforms files of their own (:meth:`~archfleet.model.BuildRequest.for_platform`); cached per
    file version, args, target and the platforms built from that file. DockerfileError (exit 2)
    when BuildKit would not build it."""
    if platform is not None and hasattr(request, "for_platform"):
        request = request.for_platform(platform)
    path = str(request.dockerfile)
    try:
        st = Path(path).stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = (0, 0)
    return _cached(path, stamp, tuple(request.build_args), request.target, tuple(request.platforms))


def platform_of(stage: Stage, build: Platform, target: Platform) -> Platform:
    """The platform a BUILD, TARGET or literal stage runs on (a stage whose --platform is an
    expression of both needs :meth:`Analysis.platform_of`)."""
    if stage.platform == BUILD:
        return build
    if stage.platform == TARGET:
        return target
    return parse(stage.platform)
