"""Estimates and the schedule: one option per platform, minimising the time the last one ends.

Estimates come in parts (:data:`archfleet.model.PARTS`): a fixed cost per build on a node,
the context transfer to a remote node, the work of the Dockerfile's steps, and the push. This
module holds the *priors* for each part (what archfleet assumes before it has measured
anything: :func:`fixed_prior`, :func:`step_prior`, :func:`push_prior`, the link rate); the
built-in ``estimates`` plugin replaces each with what history learned (per node, per step, per
project) and says where every number came from (``Option.basis``, ``Option.parts``). A
strategy's offer carries a cruder prior (:func:`prior_seconds`: the same fixed cost and step
priors, from the Dockerfile's RUN count).

Schedule: each node has ``max_builds`` slots (some possibly busy until a given time). An exact
branch-and-bound search over the options minimises the makespan (then the sum of the
platforms' finish times, so no platform queues behind others on one node while another node
could finish it sooner; then names, so equal inputs give equal plans) while the search space is small; beyond that, a
greedy list schedule (longest platform first, each to the option that finishes earliest).
"""

from __future__ import annotations

import functools
import heapq
import math
import re
import shlex
from typing import Iterable, Mapping, Sequence

import attrs

from .errors import UsageError
from .model import BuildRequest, Estimate, NodeFacts, Option
from .platforms import Platform, PlatformError, parse_target

# --- priors ---------------------------------------------------------------------------------------
# Seconds at reference speed (the project VM, one build at a time) unless said. Where each comes
# from: measured on the lab (docs/benchmarks.md, bench/estimates), not fitted to it.

FIXED_LOCAL = 0.6  # a build on this machine's engine: CLI and BuildKit start, base resolved, image written, exported
FIXED_REMOTE = 0.9  # the same on an SSH node: every command and the export travel over SSH (lab: 0.6-0.7 on loopback)
FIXED_CPU_SHARE = 0.4  # of the fixed cost, the share that is CPU work (a slow board takes longer)
RUN_OVERHEAD = 0.35  # starting a RUN step's container (runc, the mounts): native even under QEMU
RUN_WORK = 3.0  # a RUN step whose commands archfleet cannot tell (a script, a loop, a tool it does not know)
COMPILE_WORK = 8.0  # a compiler or build tool (cc, go build, cargo, make, ...)
DOWNLOAD_WORK = 4.0  # fetching something (wget, curl, git clone): the network's time, not the CPU's
PACKAGE_WORK = 10.0  # a package manager (apt-get, apk, pip, npm, ...): downloads, then unpacking on the CPU
UTILITY_WORK = 0.2  # data utilities (gzip, tar, sha256sum, ...), once per step: their input's time, usually small (here gzip -9 of 6 MB 0.12 s, sha256sum 0.02 s)
COPY_RATE = 150e6  # bytes/s a COPY or ADD from the context writes into a layer
COPY_OVERHEAD = 0.05  # a COPY, ADD or WORKDIR that moves almost nothing
QEMU_FACTOR = 8.0  # emulated CPU work costs this much more (a prior; 4-20x is typical; learned per platform)
# ... by what the CPU work is, before a factor was learned for the platform. Measured under
# qemu-aarch64 on the project VM (busybox): gzip -9 3.5x, sha256sum 3.5x, bzip2 5x, a shell loop
# 12x; a C compile ~7x (bench/cross_vs_emulation: cross 0.14 of emulated)
QEMU_BY_KIND = {"utility": 4.0, "download": 4.0, "compile": QEMU_FACTOR, "package": QEMU_FACTOR,
                "unknown": QEMU_FACTOR}
LINK_RATE = 50e6  # bytes/s to a remote node, until measured
# bytes/s an engine receives a build context at (BuildKit's "load build context": Docker 20.10's
# CLI sent a 48 MB context to its dockerd in 0.4 s here; a remote node's from its own disk)
LOAD_RATE = 100e6
PUSH_BASE = 0.15  # reading the export and putting the manifest, when no new layer is big
PUSH_RATE = 60e6  # bytes/s of new layers compressed (gzip, two threads) and uploaded
BASE_WORK = FIXED_LOCAL  # the fixed cost of a build, as strategies' offers count it
REFERENCE_CPUS = 2
EXACT_LIMIT = 50_000  # largest search space (product of option counts) searched exactly


def node_speed(facts: NodeFacts) -> float:
    """How fast ``facts``' node builds, relative to the reference node (1.0): its CPU score, times the square root of its CPUs over 2 (builds use more than one core, not linearly), divided by how overloaded it is (load above its CPU count)."""
    cores = (max(facts.cpus, 1) / REFERENCE_CPUS) ** 0.5  # builds use more than one core, not linearly
    busy = 1.0 + max(facts.load - facts.cpus, 0.0) / max(facts.cpus, 1)
    return (facts.score or 1.0) * cores / busy


def fixed_prior(facts: NodeFacts | None) -> float:
    """Seconds a build costs on ``facts``' node whatever it builds (the ``fixed`` part), before
    any build there was measured: :data:`FIXED_LOCAL` on this machine, :data:`FIXED_REMOTE` on a
    node reached through a transport (SSH), of which :data:`FIXED_CPU_SHARE` is CPU work and
    scales with the node's speed (:func:`node_speed`; the rest is waiting on the engine, the
    registry and the link)."""
    base = FIXED_LOCAL if facts is None or facts.node.transport == "local" else FIXED_REMOTE
    speed = node_speed(facts) if facts is not None else 1.0
    return base * ((1 - FIXED_CPU_SHARE) + FIXED_CPU_SHARE / max(speed, 1e-3))


def push_prior(nbytes: int) -> float:
    """Seconds to compress and upload ``nbytes`` of new layers (the ``push`` part), before the
    node's rate to the registry was measured: :data:`PUSH_BASE` + bytes / :data:`PUSH_RATE`."""
    return PUSH_BASE + max(nbytes, 0) / PUSH_RATE


@attrs.frozen
class StepPrior:
    """What a Dockerfile step costs before it was ever timed, at reference speed: ``io`` seconds
    that do not depend on the CPU (waiting: a sleep, the network, the container starting) and
    ``cpu`` seconds that do (and run ``qemu`` times slower emulated, until a factor is learned
    for the platform: :data:`QEMU_BY_KIND` weighted by each kind's CPU seconds); ``kind`` says
    which rule gave it (``sleep``, ``trivial``, ``download``, ``package``, ``compile``,
    ``utility``, ``unknown``, ``copy``, ``none``)."""

    io: float
    cpu: float
    kind: str
    qemu: float = QEMU_FACTOR

    @property
    def cpu_share(self) -> float:
        """The fraction of the step's native time that is CPU (0 when it takes no time)."""
        total = self.io + self.cpu
        return self.cpu / total if total > 0 else 0.0


# what a command's first word says about its cost (module doc of the rules in docs/concepts.md)
_TRIVIAL = frozenset("""echo printf mkdir cp ln chmod chown chgrp touch true false rm rmdir mv cat test [ cd
    export set : ls env id whoami uname date basename dirname head tail tee sed grep awk cut tr sort uniq wc
    stat readlink realpath install adduser addgroup useradd groupadd usermod exit umask unset pwd sync
    ldconfig update-ca-certificates
    [[ wait read shift return break continue local trap type hash which printenv nproc getconf""".split())
_DOWNLOAD = frozenset("wget curl git svn hg scp rsync aria2c".split())
_PACKAGE = frozenset("""apt-get apt aptitude dpkg apk dnf yum microdnf zypper pacman emerge pip pip3 pipx poetry
    uv conda mamba npm yarn pnpm bun gem bundle composer cpanm""".split())
_COMPILE = frozenset("""cc gcc g++ c++ clang clang++ zig go cargo rustc rustup make gmake cmake ninja meson
    javac mvn gradle dotnet tsc webpack esbuild vite ghc stack cabal swift swiftc ld strip upx""".split())
_UTILITY = frozenset("""gzip gunzip zcat bzip2 bunzip2 bzcat xz unxz xzcat zstd unzstd lz4 tar unzip zip sha256sum
    sha512sum sha384sum sha224sum sha1sum md5sum cksum b2sum base64 base32 dd find od hexdump xxd cmp diff split
    strings file gpg""".split())
_WRAPPERS = frozenset("exec time nice ionice sudo env nohup command xargs timeout stdbuf".split())
#: a wrapper's options that take the next word as their value (the rest take none)
_WRAPPER_VALUES = {"env": {"-u", "--unset", "-C", "--chdir"}, "nice": {"-n", "--adjustment"},
                   "ionice": {"-c", "-n", "--class", "--classdata"}, "timeout": {"-s", "--signal", "-k", "--kill-after"},
                   "sudo": {"-u", "-g", "-C", "-h", "-p", "-U", "-r", "-t"}, "exec": {"-a"}, "time": {"-f", "-o"},
                   "stdbuf": {"-i", "-o", "-e"},
                   "xargs": {"-n", "-I", "-P", "-L", "-d", "-s", "-E", "-a", "--max-args", "--max-procs", "--delimiter",
                             "--arg-file", "--max-lines", "--max-chars", "--replace"}}
_WRAPPER_POSITIONALS = {"timeout": 1}  # timeout DURATION COMMAND
_SHELLS = frozenset("sh bash dash ash zsh ksh mksh".split())  # sh -c STRING runs STRING's commands
#: words that open, continue or close a compound command; the command after them runs
_RESERVED = frozenset("if then else elif fi do done while until ! { } esac".split())
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SLEEP = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)([smhd]?)$")
_SLEEP_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PUNCTUATION = frozenset(";&|()<>\n")
_OPERATOR = re.compile(r";;&|;;|;&|&&|\|\||\|&|&>>|&>|>>|>&|>\||<<<|<<|<&|<>|\(\(|\)\)|[;&|()<>\n]")
_NESTING = 4  # sh -c 'bash -c "..."' this deep at most


def _tokens(text: str) -> list[str]:
    """Shell words and operators (stdlib ``shlex``: quotes respected, nothing expanded; its runs
    of ``;&|()<>`` split into the shell's operators, ``);`` into ``)`` and ``;``)."""
    try:
        lex = shlex.shlex(text.replace("\\\n", " "), posix=True, punctuation_chars=";&|()<>")
        lex.whitespace = " \t\r"
        lex.wordchars += "-./:=$@%+,~[]{}*?!#^"
        tokens = list(lex)
    except ValueError:  # an unbalanced quote: words as they are
        return text.split()
    return [op for tok in tokens for op in (_OPERATOR.findall(tok) if set(tok) <= _PUNCTUATION else (tok,))]


def _commands(text: str) -> list[list[str]]:
    """The simple commands a shell command line runs, each as its words, seen through the
    shell's grammar as ``/bin/sh -c`` reads it: lists (``;``, ``&&``, ``||``, ``|``, ``&``,
    newlines), compound commands (``if/then/elif/else/fi``, ``while/until/for ... do/done``,
    ``case ... esac``: its patterns run nothing, ``{ ...; }``, subshells), command substitutions
    (``$(...)``, whose words stay out of the command around it), redirections (operator and target
    dropped; a heredoc alone, BuildKit's ``RUN <<EOT``, is a command of its own: a script not
    seen). A rough reading of the structure, never of the values: nothing is expanded."""
    tokens = _tokens(text)
    out: list[list[str]] = []
    current: list[str] = []
    outer: list[list[str]] = []  # the commands a $( ... ) interrupted
    cases: list[str] = []  # per open case: "pattern" (words until ")") or "body"
    i = 0

    def end() -> list[str]:
        if [w for w in current if w]:
            out.append([w for w in current if w])
        return []

    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if cases and cases[-1] == "pattern":
            if tok == "esac":
                cases.pop()
            elif ")" in tok:
                cases[-1] = "body"
            continue
        if tok == "((":  # arithmetic, $(( )) or (( )): no command
            while i < len(tokens) and tokens[i] != "))":
                i += 1
            i += 1
            if current and current[-1].endswith("$"):
                current[-1] = current[-1][:-1]
            continue
        if set(tok) <= _PUNCTUATION:  # an operator (_tokens split them)
            if "<" in tok or ">" in tok:  # a redirection: its target is no word of the command
                if tok == "<<" and not current and i < len(tokens):
                    current = [tok + tokens[i]]  # RUN <<EOT: a script whose body is not in the words
                i += 1
            elif tok == "(" and current and current[-1].endswith("$"):  # $( ... ) inside a word
                current[-1] = current[-1][:-1]
                outer.append(current)
                current = []
            elif tok == ")" and outer:
                end()
                current = outer.pop()
            else:
                current = end()
                if cases and tok in (";;", ";&", ";;&"):
                    cases[-1] = "pattern"
            continue
        if not current:
            if tok in _RESERVED:
                continue
            if tok == "case":
                while i < len(tokens) and tokens[i] != "in":
                    i += 1
                i += 1
                cases.append("pattern")
                continue
            if tok in ("for", "select"):  # for NAME [in WORDS]; do: the words run nothing
                while i < len(tokens) and tokens[i] not in ("do", "\n", ";", "&"):
                    i += 1
                continue
        current.append(tok)
    end()
    out += [[w for w in rest if w] for rest in outer if any(rest)]
    return out


def _shell_script(args: Sequence[str]) -> str | None:
    """The command string of ``sh [OPTIONS] -c STRING [NAME ARGS]`` (options such as ``-e``,
    ``-lc``, ``-o pipefail``), None for a shell running a file or its input."""
    i, has_c = 0, False
    while i < len(args) and args[i][:1] in ("-", "+") and args[i] not in ("-", "--"):
        opt = args[i]
        i += 1
        if opt in ("-o", "+o", "--rcfile", "--init-file"):
            i += 1
        elif not opt.startswith("--") and "c" in opt[1:]:
            has_c = True
    if args[i:i + 1] == ["--"]:
        i += 1
    return args[i] if has_c and i < len(args) else None


def _programs(words: Sequence[str], depth: int = 0) -> list[tuple[str, list[str]]]:
    """The programs one simple command runs and their arguments: assignments (``A=1 cmd``) and
    wrappers (``env``, ``exec``, ``nice -n 5``, ``timeout 10``, ``time``, ``xargs -n1``, ``sudo``...)
    skipped with their options, and a shell's ``-c STRING`` read as the commands it runs."""
    i = 0
    while i < len(words):
        if _ASSIGNMENT.match(words[i]):
            i += 1
            continue
        name = words[i].rsplit("/", 1)[-1]
        if name not in _WRAPPERS:
            break
        i += 1
        takes = _WRAPPER_VALUES.get(name, ())
        while i < len(words) and words[i].startswith("-") and len(words[i]) > 1:
            i += 1
            if words[i - 1] == "--":
                break
            if words[i - 1] in takes:
                i += 1
        i += _WRAPPER_POSITIONALS.get(name, 0)
    if i >= len(words):
        return []
    name, args = words[i].rsplit("/", 1)[-1], list(words[i + 1:])
    script = _shell_script(args) if name in _SHELLS and depth < _NESTING else None
    if script is not None:
        return [p for cmd in _commands(script) for p in _programs(cmd, depth + 1)]
    return [(name, args)]


def step_prior(keyword: str, words: Sequence[str], *, json: bool = False, context_bytes: int = 0,
               from_context: bool = False) -> StepPrior:
    """:func:`_step_prior`, kept per distinct step: a plan asks it for every step of every
    option (thousands of times for one Dockerfile in a large fleet), and reading a RUN's shell
    structure is the costly part."""
    return _step_prior(keyword, tuple(words), json, context_bytes, from_context)


@functools.lru_cache(maxsize=4096)
def _step_prior(keyword: str, words: tuple[str, ...], json: bool, context_bytes: int,
                from_context: bool) -> StepPrior:
    """The prior cost of one Dockerfile step (``keyword`` upper case, ``words`` as the Dockerfile
    parser gives them), at reference speed, by what its commands are:

    - RUN: :data:`RUN_OVERHEAD` (io) plus, per simple command the shell runs (:func:`_commands`,
      :func:`_programs`: through lists, ``if``/``for``/``while``/``case``, ``{ }``, subshells,
      ``$( )`` and wrappers such as ``sh -c STRING``, ``env``, ``exec``, ``nice``, ``timeout``,
      ``time``, ``xargs``), ``sleep N`` N seconds of io; a trivial
      command (echo, mkdir, cp, ...) nothing; a download (wget, curl, git) :data:`DOWNLOAD_WORK`
      (90% io); a package manager (apt-get, apk, pip, npm, ...) :data:`PACKAGE_WORK` (half io,
      half CPU); a compiler or build tool (cc, go, cargo, make, ...) :data:`COMPILE_WORK` of CPU;
      data utilities (gzip, tar, sha256sum, ...) :data:`UTILITY_WORK` of CPU once per step (they
      work on one input, often in one pipeline);
      anything else (a script, a loop, a tool not listed) :data:`RUN_WORK` of CPU, counted once
      per step. The same command word counts once per step.
    - COPY/ADD from the context (``from_context``): ``context_bytes`` / :data:`COPY_RATE` (io);
      from a stage or image, and WORKDIR: :data:`COPY_OVERHEAD`. ADD of a URL is a download.
    - anything else: nothing (it runs no step of its own).
    """
    if keyword == "RUN":
        commands = [list(words)] if json else _commands(" ".join(words))
        io = RUN_OVERHEAD
        by_kind: dict[str, float] = {}  # CPU seconds per kind (their sum: the step's CPU; weights of its QEMU factor)
        kinds: set[str] = set()
        seen: set[str] = set()
        unknown = False
        for name, args in (p for cmd in commands for p in _programs(cmd)):
            if name == "sleep":
                total = 0.0
                for a in args:
                    m = _SLEEP.match(a)
                    if m:
                        total += float(m.group(1)) * _SLEEP_UNIT[m.group(2)]
                io += total
                kinds.add("sleep")
                continue
            if name in seen:
                continue
            seen.add(name)
            if name in _TRIVIAL:
                kinds.add("trivial")
            elif name in _DOWNLOAD:
                io += 0.9 * DOWNLOAD_WORK
                by_kind["download"] = by_kind.get("download", 0.0) + 0.1 * DOWNLOAD_WORK
                kinds.add("download")
            elif name in _PACKAGE:
                io += 0.5 * PACKAGE_WORK
                by_kind["package"] = by_kind.get("package", 0.0) + 0.5 * PACKAGE_WORK
                kinds.add("package")
            elif name in _COMPILE:
                by_kind["compile"] = by_kind.get("compile", 0.0) + COMPILE_WORK
                kinds.add("compile")
            elif name in _UTILITY:
                by_kind["utility"] = UTILITY_WORK  # they work on the step's one input: counted once
                kinds.add("utility")
            else:
                unknown = True
        if unknown:
            by_kind["unknown"] = RUN_WORK
            kinds.add("unknown")
        cpu = sum(by_kind.values(), 0.0)
        qemu = (sum(c * QEMU_BY_KIND[k] for k, c in by_kind.items()) / cpu) if cpu > 0 else QEMU_FACTOR
        for kind in ("compile", "package", "download", "unknown", "utility", "sleep", "trivial"):
            if kind in kinds:
                return StepPrior(round(io, 3), round(cpu, 3), kind, round(qemu, 3))
        return StepPrior(io, cpu, "trivial", round(qemu, 3))
    if keyword in ("COPY", "ADD"):
        if keyword == "ADD" and any(re.match(r"^(https?|git)://", w) for w in words[:-1]):
            return StepPrior(COPY_OVERHEAD + DOWNLOAD_WORK, 0.0, "download")
        if from_context:
            return StepPrior(COPY_OVERHEAD + max(context_bytes, 0) / COPY_RATE, 0.0, "copy")
        return StepPrior(COPY_OVERHEAD, 0.0, "copy")
    if keyword == "WORKDIR":
        return StepPrior(COPY_OVERHEAD, 0.0, "trivial")
    return StepPrior(0.0, 0.0, "none")


def _runs(request: BuildRequest) -> int:
    from .dockerfile import analyse

    try:
        return sum(s.runs for s in analyse(request).used)
    except Exception:
        return 1


def reference_work(request: BuildRequest) -> float:
    """Seconds of a build at reference speed, from the Dockerfile's RUN count, before history:
    :data:`BASE_WORK` + :data:`RUN_WORK` per RUN (a strategy's offer; the ``estimates`` plugin
    counts each step by what it runs instead)."""
    return BASE_WORK + RUN_WORK * _runs(request)


def prior_seconds(request: BuildRequest, facts: NodeFacts, *, emulated: bool, share: float = 1.0) -> float:
    """A first estimate for a strategy's offer: reference work (or ``share`` of it) scaled by
    node speed; under emulation only the RUN work is slowed by the QEMU factor. The fixed part
    (resolving the base, exporting, pushing) runs natively whatever the platform: an image that
    RUNs nothing executes nothing under QEMU."""
    run_work = RUN_WORK * _runs(request) * (QEMU_FACTOR if emulated else 1.0)
    return round((BASE_WORK + run_work) * share / node_speed(facts), 2)


# --- pins -----------------------------------------------------------------------------------------

@attrs.frozen
class Pin:
    """One ``--strategy``/``--node`` flag: for ``platform`` (None: every platform) only options of ``strategy`` and/or on ``node``. ``flag`` is the flag as given, for messages."""
    platform: Platform | None  # None: every platform
    strategy: str | None
    node: str | None
    flag: str = attrs.field(default="", eq=False)  # the flag as given ("--node 'linux/arm64=pi4'"), for messages

    def allows(self, option: Option) -> bool:
        """True when ``option`` may be planned under this pin (a pin for another platform allows everything)."""
        if self.platform is not None and option.platform != self.platform:
            return True
        return (self.strategy is None or option.strategy == self.strategy) and (
            self.node is None or option.node == self.node)


def parse_pins(strategies: Sequence[str], nodes: Sequence[str]) -> tuple[Pin, ...]:
    """``--strategy S``, ``--strategy P=S``, ``--node N``, ``--node P=N``, ``--node P=S@N``.

    Checks the syntax only (a platform archfleet can build, non-empty names); which nodes and
    strategies exist is :func:`check_pins`' job. Raises :class:`UsageError`, one line."""
    pins = []

    def split(flag: str, text: str) -> tuple[Platform | None, str]:
        if "=" in text:
            plat, _, value = text.partition("=")
            try:
                return parse_target(plat), value
            except PlatformError as exc:
                raise UsageError(f"{flag} {text!r}: {exc}") from None
        return None, text

    for text in strategies:
        platform, value = split("--strategy", text)
        if not value:
            raise UsageError(f"--strategy {text!r}: name a strategy (native, qemu, cross, ...)")
        pins.append(Pin(platform, value, None, f"--strategy {text!r}"))
    for text in nodes:
        platform, value = split("--node", text)
        strategy, at, node = value.rpartition("@")
        if not node or (at and not strategy):
            raise UsageError(f"--node {text!r}: name a node ([PLATFORM=][STRATEGY@]NODE)")
        pins.append(Pin(platform, strategy or None, node, f"--node {text!r}"))
    return tuple(pins)


def check_pins(pins: Sequence[Pin], platforms: Sequence[Platform], nodes: Sequence[str]) -> None:
    """Every pin names a platform being built and a node that exists and is enabled (``nodes``).
    Raises :class:`UsageError` naming the flag and what exists, for the first pin that does not."""
    for pin in pins:
        if pin.platform is not None and pin.platform not in platforms:
            raise UsageError(f"{pin.flag}: {pin.platform} is not being built (--platform: "
                             f"{', '.join(map(str, platforms))})")
        if pin.node is not None and pin.node not in nodes:
            raise UsageError(f"{pin.flag}: no node named {pin.node!r} (known: {', '.join(nodes) or 'none'}; "
                             "see archfleet ls)")


def check_pin_strategies(pins: Sequence[Pin], strategies: Iterable[str]) -> None:
    """Every pinned strategy is one of ``strategies`` (the plugins' and their offers' names).
    Raises :class:`UsageError` naming the flag and the known strategies."""
    known = sorted(set(strategies))
    for pin in pins:
        if pin.strategy is not None and pin.strategy not in known:
            raise UsageError(f"{pin.flag}: no strategy named {pin.strategy!r} (known: "
                             f"{', '.join(known) or 'none'}; see archfleet plugins)")


def apply_pins(options: Iterable[Option], pins: Sequence[Pin]) -> list[Option]:
    """The options every pin allows, in order."""
    return [o for o in options if all(p.allows(o) for p in pins)]


# --- the schedule ---------------------------------------------------------------------------------

@attrs.frozen
class Scheduled:
    """An option placed in the plan: it starts ``start`` and ends ``finish`` seconds from now."""
    option: Option
    start: float
    finish: float


@attrs.frozen
class Rejected:
    """An option not chosen, with one line saying why (slower, or its node's slots are taken)."""
    option: Option
    why: str


@attrs.frozen
class Plan:
    """The schedule: one :class:`Scheduled` option per plannable platform (in request order), the rejected alternatives, the platforms no option exists for (with why), and whether the search was exact."""
    chosen: tuple[Scheduled, ...]
    rejected: tuple[Rejected, ...]
    unplannable: tuple[tuple[Platform, str], ...] = ()
    exact: bool = True

    @property
    def makespan(self) -> float:
        """Seconds until the last platform is done (0 for an empty plan)."""
        return max((s.finish for s in self.chosen), default=0.0)

    def option_for(self, platform: Platform) -> Option | None:
        """The option chosen for ``platform``, or None."""
        for s in self.chosen:
            if s.option.platform == platform:
                return s.option
        return None


def _key(option: Option) -> tuple:
    return (option.estimate, option.emulated, option.strategy, option.node)


def _slots(capacity: Mapping[str, int], busy: Mapping[str, Sequence[float]] | None) -> dict[str, list[float]]:
    slots = {}
    for node, cap in capacity.items():
        if cap <= 0:
            continue
        # more builds than slots (another run overcommitted the node): a slot frees when the
        # count running drops below ``cap``, so the slots free at the ``cap`` latest ends
        taken = sorted((busy or {}).get(node, ()))[-cap:]
        heap = list(taken) + [0.0] * (cap - len(taken))
        heapq.heapify(heap)
        slots[node] = heap
    return slots


def _place(assignment: Sequence[Option], capacity, busy) -> dict[Platform, Scheduled]:
    """Times for an assignment, placed in its order, each on its node's earliest free slot
    (the same rule the search used, so the reported times are the ones it optimised)."""
    slots = _slots(capacity, busy)
    out: dict[Platform, Scheduled] = {}
    for opt in assignment:
        heap = slots[opt.node]
        start = heap[0]
        heapq.heapreplace(heap, start + opt.estimate)
        out[opt.platform] = Scheduled(opt, start, start + opt.estimate)
    return out


def schedule(platforms: Sequence[Platform], options: Iterable[Option], capacity: Mapping[str, int],
             busy: Mapping[str, Sequence[float]] | None = None, *, exact: bool | None = None) -> Plan:
    """Choose one option per platform. ``capacity``: node -> build slots; ``busy``: node -> when
    its already-taken slots free up (seconds from now)."""
    by_platform: dict[Platform, list[Option]] = {p: [] for p in platforms}
    for opt in options:
        if opt.platform in by_platform and capacity.get(opt.node, 0) > 0:
            by_platform[opt.platform].append(opt)
    for p in by_platform:
        by_platform[p].sort(key=_key)
    unplannable = tuple((p, "no strategy offered a way to build it") for p, opts in by_platform.items() if not opts)
    plannable = [p for p in platforms if by_platform[p]]
    order = sorted(plannable, key=lambda p: (-by_platform[p][0].estimate, str(p)))
    space = math.prod(len(by_platform[p]) for p in order) if order else 0
    use_exact = exact if exact is not None else space <= EXACT_LIMIT
    if not order:  # nothing can be planned: say so, per platform
        return Plan((), (), unplannable, use_exact)
    assignment = (_exact if use_exact else _greedy)(order, by_platform, capacity, busy)
    placed = _place(assignment, capacity, busy)
    rejected = []
    for p in plannable:
        win = placed[p]
        for opt in by_platform[p]:
            if opt == win.option:
                continue
            if opt.estimate > win.option.estimate:
                why = f"slower: {opt.estimate:.1f}s vs {win.option.estimate:.1f}s"
            else:
                held = sorted((busy or {}).get(opt.node, ()))[-capacity.get(opt.node, 1):]
                takers = []
                if held:
                    takers.append(f"{len(held)} by other archfleet runs (the first free in ~{held[0]:.0f}s)")
                if any(s.option.node == opt.node for q, s in placed.items() if q != p) or not held:
                    takers.append("by other platforms of this run")
                why = (f"faster alone ({opt.estimate:.1f}s), but {opt.node}'s slots are taken "
                       f"{' and '.join(takers)}; {win.option} ends sooner overall")
            rejected.append(Rejected(opt, why))
    return Plan(tuple(placed[p] for p in platforms if p in placed), tuple(rejected), unplannable, use_exact)


def _greedy(order, by_platform, capacity, busy) -> list[Option]:
    slots = _slots(capacity, busy)
    chosen = []
    for p in order:
        best = None
        for opt in by_platform[p]:
            finish = slots[opt.node][0] + opt.estimate
            if best is None or finish < best[0] - 1e-9:
                best = (finish, opt)
        heapq.heapreplace(slots[best[1].node], best[0])
        chosen.append(best[1])
    return chosen


def _exact(order, by_platform, capacity, busy) -> list[Option]:
    """Branch and bound: the assignment with the least makespan, then the least sum of finish
    times (with makespan alone, a plan that queues three platforms on one node while another
    sits idle ties with one that spreads them, whenever some other platform sets the makespan)."""
    best: list = [None, (math.inf, math.inf), None]  # [assignment, (makespan, sum of finishes), tie-key]
    greedy = _greedy(order, by_platform, capacity, busy)
    g = _place(greedy, capacity, busy)
    best[0] = greedy
    best[1] = (max(s.finish for s in g.values()), sum(s.finish for s in g.values()))
    best[2] = tuple(_key(o) for o in greedy)
    # lower bounds on what the platforms still to place add: each needs at least its fastest
    # option, so it ends no sooner than that
    tail_lb = [0.0] * (len(order) + 1)
    for i in range(len(order) - 1, -1, -1):
        tail_lb[i] = max(tail_lb[i + 1], by_platform[order[i]][0].estimate)
    tail_work = [0.0] * (len(order) + 1)
    for i in range(len(order) - 1, -1, -1):
        tail_work[i] = tail_work[i + 1] + by_platform[order[i]][0].estimate
    slots = _slots(capacity, busy)
    chosen: list[Option] = []

    def visit(i: int, makespan: float, total: float) -> None:
        if max(makespan, tail_lb[i]) > best[1][0] + 1e-9:
            return
        if max(makespan, tail_lb[i]) >= best[1][0] - 1e-9 and total + tail_work[i] > best[1][1] + 1e-9:
            return
        if i == len(order):
            cand = (makespan, total)
            key = tuple(_key(o) for o in chosen)
            if cand[0] < best[1][0] - 1e-9 or (abs(cand[0] - best[1][0]) <= 1e-9 and (
                    cand[1] < best[1][1] - 1e-9 or (abs(cand[1] - best[1][1]) <= 1e-9 and key < best[2]))):
                best[0], best[1], best[2] = list(chosen), cand, key
            return
        for opt in by_platform[order[i]]:
            heap = slots[opt.node]
            start = heapq.heappop(heap)
            heapq.heappush(heap, start + opt.estimate)
            chosen.append(opt)
            visit(i + 1, max(makespan, start + opt.estimate), total + start + opt.estimate)
            chosen.pop()
            heap.remove(start + opt.estimate)
            heapq.heapify(heap)
            heapq.heappush(heap, start)

    visit(0, 0.0, 0.0)
    return best[0]


# --- estimates ------------------------------------------------------------------------------------

def apply_estimates(options: Sequence[Option], answers: Sequence["Estimate | tuple[float, str] | None"]) -> list[Option]:
    """``options`` with the refined estimates the pipeline got from ``archfleet_estimate``:
    ``answers[i]`` is an :class:`~archfleet.model.Estimate` (or ``(seconds, basis)``) for
    ``options[i]``, or None to keep its offer's estimate. Seconds (and parts) are rounded to 10 ms
    (the plan prints them); the parts and the planned steps ride on the option."""
    if len(options) != len(answers):
        raise ValueError("one answer per option")
    out = []
    for opt, got in zip(options, answers):
        if got is None:
            out.append(opt)
        elif isinstance(got, tuple):
            out.append(attrs.evolve(opt, estimate=round(got[0], 2), basis=got[1]))
        else:
            out.append(attrs.evolve(opt, estimate=round(got.seconds, 2), basis=got.basis,
                                    parts=tuple((k, round(v, 2)) for k, v in got.parts), steps=got.steps))
    return out


# --- fallback -------------------------------------------------------------------------------------

def next_best(alternatives: Sequence[Option], tried: Iterable[Option], down: Iterable[str],
              wait: Mapping[str, float]) -> Option | None:
    """The option to run a platform on after a node failed: among ``alternatives`` (its options),
    those not tried yet and not on a node that is ``down``, the one that would finish first: its
    estimate plus ``wait[node]``, the seconds until its node has a free build slot (0 if absent).
    Ties go to the strategy, then the node name, so equal inputs give the same choice. None when
    nothing is left."""
    tried, down = set(tried), set(down)
    remaining = [o for o in alternatives if o not in tried and o.node not in down]
    if not remaining:
        return None
    return min(remaining, key=lambda o: (wait.get(o.node, 0.0) + o.estimate, o.strategy, o.node))
