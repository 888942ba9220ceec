"""Estimates and the schedule: one option per platform, minimising the time the last one ends.

The schedule is a list schedule over each node's build slots (``max_builds``): platforms with
the longest best option go first (LPT), each to the option that finishes earliest given the
slots already taken. Equal inputs give equal plans (ties break on names).
"""

from __future__ import annotations

import heapq
from typing import Iterable, Sequence

import attrs

from .model import BuildRequest, NodeFacts, Option
from .platforms import Platform

BASE_WORK = 10.0  # seconds of build work on a reference node, when nothing better is known
QEMU_FACTOR = 8.0  # emulated work costs this much more (a prior; 4-20x is typical)
REFERENCE_CPUS = 2


def prior_seconds(request: BuildRequest, facts: NodeFacts, *, emulated: bool) -> float:
    """A first estimate of one build: reference work scaled by node speed and emulation."""
    cores = (max(facts.cpus, 1) / REFERENCE_CPUS) ** 0.5  # builds use more than one core, not linearly
    speed = (facts.score or 1.0) * cores
    busy = 1.0 + max(facts.load - facts.cpus, 0.0) / max(facts.cpus, 1)
    work = BASE_WORK * (QEMU_FACTOR if emulated else 1.0)
    return round(work / speed * busy, 2)


@attrs.frozen
class Scheduled:
    option: Option
    start: float
    finish: float


@attrs.frozen
class Rejected:
    option: Option
    why: str


@attrs.frozen
class Plan:
    chosen: tuple[Scheduled, ...]
    rejected: tuple[Rejected, ...]
    unplannable: tuple[tuple[Platform, str], ...] = ()

    @property
    def makespan(self) -> float:
        return max((s.finish for s in self.chosen), default=0.0)

    def option_for(self, platform: Platform) -> Option | None:
        for s in self.chosen:
            if s.option.platform == platform:
                return s.option
        return None


def _sort_key(option: Option) -> tuple:
    return (option.estimate, option.emulated, option.strategy, option.node)


def schedule(platforms: Sequence[Platform], options: Iterable[Option], capacity: dict[str, int],
             busy: dict[str, Sequence[float]] | None = None) -> Plan:
    """Choose one option per platform. ``capacity``: node -> build slots; ``busy``: node -> when
    its already-taken slots free up (seconds from now)."""
    by_platform: dict[Platform, list[Option]] = {p: [] for p in platforms}
    for opt in options:
        if opt.platform in by_platform and capacity.get(opt.node, 0) > 0:
            by_platform[opt.platform].append(opt)
    slots: dict[str, list[float]] = {}
    for node, cap in capacity.items():
        taken = sorted((busy or {}).get(node, ()))[:cap]
        heap = list(taken) + [0.0] * (cap - len(taken))
        heapq.heapify(heap)
        slots[node] = heap
    unplannable = tuple((p, "no strategy offered a way to build it") for p, opts in by_platform.items() if not opts)
    order = sorted(
        (p for p, opts in by_platform.items() if opts),
        key=lambda p: (-min(o.estimate for o in by_platform[p]), str(p)),
    )
    chosen: dict[Platform, Scheduled] = {}
    for p in order:
        best = None
        for opt in sorted(by_platform[p], key=_sort_key):
            start = slots[opt.node][0]
            finish = start + opt.estimate
            if best is None or finish < best.finish - 1e-9:
                best = Scheduled(opt, start, finish)
        assert best is not None
        heapq.heapreplace(slots[best.option.node], best.finish)
        chosen[p] = best
    rejected = []
    for p in platforms:
        if p not in chosen:
            continue
        win = chosen[p]
        for opt in sorted(by_platform[p], key=_sort_key):
            if opt == win.option:
                continue
            if opt.estimate > win.option.estimate:
                why = f"slower: {opt.estimate:.1f}s vs {win.option.estimate:.1f}s"
            else:
                why = f"{opt.node} busy with other platforms; {win.option} finishes sooner ({win.finish:.1f}s)"
            rejected.append(Rejected(opt, why))
    return Plan(tuple(chosen[p] for p in platforms if p in chosen), tuple(rejected), unplannable)


def refine(pm, options: Sequence[Option], request: BuildRequest, facts: dict[str, NodeFacts]) -> list[Option]:
    """Let plugins refine each option's estimate (``archfleet_estimate``)."""
    out = []
    for opt in options:
        value = pm.hook.archfleet_estimate(option=opt, request=request, facts=facts.get(opt.node))
        out.append(attrs.evolve(opt, estimate=float(value)) if value is not None else opt)
    return out
