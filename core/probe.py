"""Probing a node through any transport: machine, CPUs, memory, load, binfmt handlers, the
engine and its CLI (through the node's engine adapter, :mod:`archfleet.engines`), build slots
other archfleet runs hold there (their leases), and a short CPU benchmark (read from the score
cache when measured lately, see :mod:`archfleet.scores`).

The probe only reads the caches (a node's score, its link rate). A score it measures is
reported in the facts (``NodeFacts.score_measured``) and kept by the learn stage
(:mod:`archfleet.learn`), not here.

Everything runs as fixed scripts (``sh -c SCRIPT``); nothing from the user is ever part of a
script. Both the local and the SSH transport use this, so their numbers compare.
"""

from __future__ import annotations

import asyncio

import attrs

from . import binfmt, leases, linkrate, scores
from .engines import adapter_for
from .model import NodeFacts, NodeSpec
from .platforms import PlatformError, from_uname, native_platforms
from .scores import score_key

FACTS_SCRIPT = r"""
echo "machine=$(uname -m)"
echo "cpuflags=$(sed -n 's/^flags[[:space:]]*: *//p' /proc/cpuinfo 2>/dev/null | head -n 1)"
echo "cpus=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"
echo "mem_kb=$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\) kB$/\1/p' /proc/meminfo 2>/dev/null)"
echo "load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null)"
for f in /proc/sys/fs/binfmt_misc/qemu-*; do
  [ -e "$f" ] || continue
  echo "binfmt=${f##*/}:$(head -n1 "$f"):$(sed -n 's/^flags: *//p' "$f")"
done
""" + leases.READ_SCRIPT + "\n"

# A fixed amount of shell arithmetic; the node's time for it gives the speed score.
BENCH_SCRIPT = r"""
s=$(date +%s%N); i=0
while [ $i -lt 100000 ]; do i=$((i+1)); done
e=$(date +%s%N); echo "bench_us=$(( (e - s) / 1000 ))"
"""
BENCH_REFERENCE_US = 67_000.0  # what the project VM (dash, one core) takes: score 1.0


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
    done = await transport.run(["sh", "-c", BENCH_SCRIPT], timeout=120)
    us = parse_facts(done.tail).get("bench_us")
    if not done.ok or not us or not us.isdigit() or int(us) <= 0:
        return Score(None)
    return Score(round(BENCH_REFERENCE_US / int(us), 3), measured=True)


async def probe_node(transport, node: NodeSpec, candidates=None) -> NodeFacts:
    """Facts of ``node`` through ``transport`` (already connected); the engine's through its
    adapter (``node.engine``), trying the CLIs ``candidates`` (default: the adapter's for a node)."""
    done = await transport.run(["sh", "-c", FACTS_SCRIPT, "sh", leases.shared_root(), leases.engine_key(node)],
                               timeout=60)
    if not done.ok:
        return NodeFacts(node, False, error=f"probe failed: {done.last_line()}")
    raw = parse_facts(done.tail)
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
    adapter = adapter_for(node.engine)
    if candidates is None:
        candidates = adapter.candidates(node.engine_cli, local=False)
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
