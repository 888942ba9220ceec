"""Probing a node through any transport: machine, CPUs, memory, load, binfmt handlers, the
engine and its CLI (through the node's engine adapter, :mod:`archfleet.engines`), build slots
other archfleet runs hold there (their leases), and a short CPU benchmark (read from the score
cache when measured lately, see :mod:`archfleet.scores`).

The probe only reads the caches (a node's score, its link rate). A score it measures is
reported in the facts (``NodeFacts.score_measured``) and kept by the learn stage
(:mod:`archfleet.learn`), not here.

Everything runs as fixed scripts (``sh -c SCRIPT``); nothing from the user is ever part of a
script. Both the local and the SSH transport use this, so their numbers compare.

One session per node (issue 17): every command a session starts pays the node's login shell
(sshd runs the command through it, and a ``~/.bashrc`` that runs ``pyenv init`` costs ~0.2 s
each time), so the probe asks for the facts, the engine adapter's own probe commands
(``Engine.probe_argvs``: for docker, each candidate CLI's ``--version`` and ``info``, whose
client part lists the buildx plugin) and, when no score is cached, the benchmark, all in one run of :data:`BATCH_SCRIPT`
(:func:`run_batch`), whose commands travel as argv words, never as script text. The adapter's
probe then reads those answers through :class:`Answered` as if it ran them; anything else it
runs, it runs for real. A probe used to take three rounds of six sessions per node.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Sequence

import attrs

from . import binfmt, leases, linkrate, scores
from .engines import adapter_for
from .model import NodeFacts, NodeSpec
from .platforms import PlatformError, from_uname, native_platforms
from .scores import score_key
from .transport import Completed

# Shell builtins where a file is read line by line (a probe of many nodes pays every process
# each node starts: the binfmt handlers alone were two per handler).
FACTS_SCRIPT = r"""
echo "machine=$(uname -m)"
echo "cpuflags=$(sed -n '/^flags[[:space:]]*:/{s/^flags[[:space:]]*: *//p;q;}' /proc/cpuinfo 2>/dev/null)"
echo "cpus=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"
mem=; while read -r k v _; do [ "$k" = MemTotal: ] && { mem=$v; break; }; done 2>/dev/null < /proc/meminfo
echo "mem_kb=$mem"
load=; read -r load _ 2>/dev/null < /proc/loadavg; echo "load=$load"
for f in /proc/sys/fs/binfmt_misc/qemu-*; do
  [ -e "$f" ] || continue
  st=; fl=; { read -r st; while read -r k v; do [ "$k" = flags: ] && fl=$v; done; } 2>/dev/null < "$f"
  echo "binfmt=${f##*/}:$st:$fl"
done
""" + leases.READ_SCRIPT + "\n"

# A fixed amount of shell arithmetic; the node's time for it gives the speed score.
BENCH_SCRIPT = r"""
s=$(date +%s%N); i=0
while [ $i -lt 100000 ]; do i=$((i+1)); done
e=$(date +%s%N); echo "bench_us=$(( (e - s) / 1000 ))"
"""
BENCH_REFERENCE_US = 67_000.0  # what the project VM (dash, one core) takes: score 1.0
BENCH_ARGV = ("sh", "-c", BENCH_SCRIPT)


# Runs several commands in one session: $1 is a marker, $2 how many of the commands (the first
# ones) run at once, then for each command its word count and its words. Each command's output
# (stdout and stderr, stdin empty) is framed by marker lines carrying its exit status. Those run
# at once write to files in a private directory ($TMPDIR/archfleet-batch.<the shell's pid>, made
# 0700 by mkdir, which fails rather than follow anything already there; without one they run one
# after another) and are printed in order, each as soon as it and those before it have ended; the
# rest run one after another once they all have. A batch killed before its EXIT trap ran (the SSH
# transport's KILL on a cancel or timeout) leaves its directory: the next batch on the node
# removes every such directory of its user whose shell is gone. The command words are data
# ("$@"), never script text.
BATCH_SCRIPT = r"""
m=$1; p=$2; shift 2; c=0
_take() { n=$1; shift; total=$#; i=0
  for a do if [ "$i" -lt "$n" ]; then set -- "$@" "$a"; fi; i=$((i+1)); done
  shift "$total"; "$@"; }
t=${TMPDIR:-/tmp}; d=
for o in "$t"/archfleet-batch.*; do
  k=${o##*.}; case $k in ''|*[!0-9]*) continue;; esac
  [ -d "$o" ] && [ -O "$o" ] && ! kill -0 "$k" 2>/dev/null && rm -rf "$o"
done
if [ "$p" -gt 0 ] && mkdir -m 700 "$t/archfleet-batch.$$" 2>/dev/null; then
  d=$t/archfleet-batch.$$; trap 'rm -rf "$d"' EXIT; trap 'exit 129' HUP INT TERM PIPE
fi
if [ -n "$d" ]; then
  while [ "$c" -lt "$p" ] && [ $# -gt 0 ]; do
    n=$1; shift; c=$((c+1))
    (_take "$n" "$@" </dev/null >"$d/$c" 2>&1; echo "$?" >"$d/$c.rc") &
    echo "$c $!" >>"$d/jobs"
    shift "$n"
  done
  while read -r k pid; do
    wait "$pid"; echo "$m $k begin"; rc=
    while IFS= read -r l || [ -n "$l" ]; do printf '%s\n' "$l"; done <"$d/$k"
    read -r rc <"$d/$k.rc"; printf '\n%s %s end %s\n' "$m" "$k" "$rc"
  done <"$d/jobs"
fi
while [ $# -gt 0 ]; do
  n=$1; shift; c=$((c+1))
  echo "$m $c begin"
  _take "$n" "$@" </dev/null 2>&1
  printf '\n%s %s end %s\n' "$m" "$c" "$?"
  shift "$n"
done
"""


async def run_batch(transport, commands: Sequence[Sequence[str]], *, timeout: float = 60,
                    together: int = 0) -> dict[tuple, Completed]:
    """Run ``commands`` (argv lists) in one session on the node (:data:`BATCH_SCRIPT`): the first
    ``together`` at once, then the rest one after another; their answers by argv (every line
    each printed, as ``tail``). A command whose answer did not come back whole (the batch timed
    out after ``timeout`` seconds in it or in one before it, or was cut off) is left out: its
    caller runs it itself; a batch killed at its timeout or cancel leaves its private directory
    (a few bytes, in the node's ``$TMPDIR``), which the next batch on that node removes. Raises
    what ``transport.run`` raises but a timeout (the node is unreachable)."""
    if not commands:
        return {}
    marker = "@@archfleet-" + secrets.token_hex(6)
    words: list[str] = []
    for argv in commands:
        words += [str(len(argv)), *argv]
    lines: list[str] = []
    try:
        await transport.run(["sh", "-c", BATCH_SCRIPT, "sh", marker, str(max(0, together)), *words],
                            on_line=lines.append, timeout=timeout)
    except (TimeoutError, asyncio.TimeoutError):
        pass  # the commands that ended are answered; the caller runs the one that hung itself
    out: dict[tuple, Completed] = {}
    current: list[str] | None = None
    for line in lines:
        if line.startswith(marker + " "):
            fields = line.split()
            if len(fields) == 3 and fields[2] == "begin":
                current = []
            elif len(fields) == 4 and fields[2] == "end" and current is not None and fields[1].isdigit():
                k = int(fields[1]) - 1
                if 0 <= k < len(commands) and fields[3].lstrip("-").isdigit():
                    if current and current[-1] == "":
                        current.pop()  # the newline the end marker starts with
                    out[tuple(commands[k])] = Completed(tuple(commands[k]), int(fields[3]), tuple(current))
                current = None
        elif current is not None:
            current.append(line)
    return out


class Answered:
    """``transport`` with the answers of commands already run (:func:`run_batch`): ``run`` of
    one of them (no environment or stdin of its own) answers at once, feeding ``on_line`` every
    line it printed and keeping the last 40 as ``tail``, as a transport does; every other call
    goes to ``transport``."""

    def __init__(self, transport, answers: dict[tuple, Completed]):
        self._transport = transport
        self._answers = answers

    async def run(self, argv, *, env=None, stdin=None, on_line=None, timeout=None) -> Completed:
        """The batch's answer for ``argv``, else ``transport.run``."""
        got = self._answers.get(tuple(argv)) if env is None and stdin is None else None
        if got is None:
            return await self._transport.run(argv, env=env, stdin=stdin, on_line=on_line, timeout=timeout)
        if on_line is not None:
            for line in got.tail:
                on_line(line)
        return Completed(got.argv, got.returncode, got.tail[-40:])

    def __getattr__(self, name):
        return getattr(self._transport, name)


def parse_facts(lines) -> dict:
    """The facts script's ``key=value`` lines as a dict: ``binfmt`` (a list of :class:`~archfleet.binfmt.Handler`), ``lease`` (the raw values) and every other key as its stripped string."""
    out: dict = {"binfmt": [], "lease": []}
    for line in lines:
        key, _, value = line.strip().partition("=")
        if key == "lease":
            out["lease"].append(value)
        elif key == "binfmt":
            name, _, rest = value.partition(":")
            state, _, flags = rest.partition(":")
            out["binfmt"].append(binfmt.Handler(name, state.strip() == "enabled", "", flags.strip()))
        elif key:
            out[key] = value.strip()
    return out


@attrs.frozen
class Score:
    """A node's CPU benchmark score: ``value`` (higher is faster, 1.0 = the project VM; None when
    it could not be measured) and whether this probe measured it (``measured``: the learn stage
    keeps it) or read it from the score cache."""

    value: float | None
    measured: bool = False


async def benchmark(transport, node: NodeSpec) -> Score:
    """The node's score: the cached one when measured within ``scores.SCORE_TTL``, else measured now
    through ``transport`` (a fixed script, up to 120 s). Writes nothing: a plugin puts
    ``value`` and ``measured`` into its NodeFacts (``score``, ``score_measured``)."""
    cached = await asyncio.to_thread(scores.cached, score_key(node))
    if cached is not None:
        return Score(cached)
    done = await transport.run(BENCH_ARGV, timeout=120)
    us = parse_facts(done.tail).get("bench_us")
    if not done.ok or not us or not us.isdigit() or int(us) <= 0:
        return Score(None)
    return Score(round(BENCH_REFERENCE_US / int(us), 3), measured=True)


async def probe_node(transport, node: NodeSpec, candidates=None) -> NodeFacts:
    """Facts of ``node`` through ``transport`` (already connected); the engine's through its
    adapter (``node.engine``), trying the CLIs ``candidates`` (default: the adapter's for a node).
    All of it in one session when it can (module doc)."""
    adapter = adapter_for(node.engine)
    if candidates is None:
        candidates = adapter.candidates(node.engine_cli, local=False)
    facts_argv = ("sh", "-c", FACTS_SCRIPT, "sh", leases.shared_root(), leases.engine_key(node))
    batch = [facts_argv, *getattr(adapter, "probe_argvs", lambda c: [])(candidates)]
    together = len(batch)  # independent and short: at once (~0.1 s of CLI starts one after another)
    scored = await asyncio.to_thread(scores.cached, score_key(node))
    if scored is None:
        batch.append(BENCH_ARGV)  # alone, after them: it measures the CPU
    transport = Answered(transport, await run_batch(transport, batch, timeout=60 if scored is not None else 180,
                                                    together=together))
    lines: list[str] = []  # every line: a result's tail is its last 40, and a node with QEMU's ~30
    # handlers and a few leases prints more (the machine, first, was lost: "unsupported machine None")
    done = await transport.run(list(facts_argv), on_line=lines.append, timeout=60)
    if not done.ok:
        return NodeFacts(node, False, error=f"probe failed: {done.last_line()}")
    raw = parse_facts(lines)
    try:
        native = from_uname(raw.get("machine", ""))
    except PlatformError as exc:
        return NodeFacts(node, False, error=f"unsupported machine {raw.get('machine')!r}: {exc}")
    natives = native_platforms(raw.get("machine", ""), raw.get("cpuflags"))
    if node.arch is not None and node.arch not in natives:
        return NodeFacts(node, False, error=f"{node.source}: arch = {node.arch} but the node says it is "
                                            f"{native} (uname -m: {raw.get('machine')}); fix or remove 'arch'",
                         fix=f"fix or remove 'arch' at {node.source}")
    emulated = tuple(p for p in binfmt.emulated_platforms(raw["binfmt"]) if p not in natives)
    problems = tuple((p, why) for p, why in binfmt.unusable(raw["binfmt"]) if p not in natives)
    found = await adapter.probe(transport, node, candidates)
    if not found.answered:
        return NodeFacts(node, False, error=found.error, native=natives, emulated=emulated, fix=found.fix)
    cli = found.cli
    score = await benchmark(transport, node)

    def num(key, kind, default):
        try:
            return kind(raw.get(key, ""))
        except ValueError:
            return default

    return NodeFacts(
        node, True, error=found.error, native=natives, emulated=emulated, emulation_problems=problems,
        engine_version=found.version, rootless=found.rootless, capabilities=found.capabilities, fix=found.fix,
        engine_cli=cli.argv if cli else (), builder=cli.mode if cli else None,
        cpus=num("cpus", int, 1), memory=num("mem_kb", int, 0) * 1024, load=num("load", float, 0.0), score=score.value,
        busy=leases.parse(raw["lease"]), link_rate=linkrate.measured(score_key(node)), score_measured=score.measured,
    )
