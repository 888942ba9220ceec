"""Estimates and the schedule: one option per platform, minimising the time the last one ends.

Estimates: a strategy's offer carries a prior (reference work scaled by the node's speed and
the strategy's factor: native 1, QEMU 8, cross a blend); the built-in ``estimates`` plugin then
replaces it with history where this context or project was built before, learns the QEMU
factor per node, and adds the context transfer to remote nodes. Every estimate says in one
line where it came from (``Option.basis``).

Schedule: each node has ``max_builds`` slots (some possibly busy until a given time). An exact
branch-and-bound search over the options minimises the makespan (then the sum of the
platforms' finish times, so no platform queues behind others on one node while another node
could finish it sooner; then names, so equal inputs give equal plans) while the search space is small; beyond that, a
greedy list schedule (longest platform first, each to the option that finishes earliest).
"""

from __future__ import annotations

import heapq
import math
from typing import Iterable, Mapping, Sequence

import attrs

from .errors import UsageError
from .model import BuildRequest, NodeFacts, Option
from .platforms import Platform, PlatformError, parse_target

BASE_WORK = 2.0  # seconds for a build that RUNs nothing, on a reference node
RUN_WORK = 4.0  # seconds per RUN instruction, a prior until history knows better
QEMU_FACTOR = 8.0  # emulated work costs this much more (a prior; 4-20x is typical)
REFERENCE_CPUS = 2
LINK_RATE = 50e6  # bytes/s to a remote node, until measured
EXACT_LIMIT = 50_000  # largest search space (product of option counts) searched exactly


def node_speed(facts: NodeFacts) -> float:
    """How fast ``facts``' node builds, relative to the reference node (1.0): its CPU score, times the square root of its CPUs over 2 (builds use more than one core, not linearly), divided by how overloaded it is (load above its CPU count)."""
    cores = (max(facts.cpus, 1) / REFERENCE_CPUS) ** 0.5  # builds use more than one core, not linearly
    busy = 1.0 + max(facts.load - facts.cpus, 0.0) / max(facts.cpus, 1)
    return (facts.score or 1.0) * cores / busy


def _runs(request: BuildRequest) -> int:
    from .dockerfile import analyse

    try:
        return sum(s.runs for s in analyse(request).used)
    except Exception:
        return 1


def reference_work(request: BuildRequest) -> float:
    """Seconds of work at reference speed, from the Dockerfile (RUN count), before history."""
    return BASE_WORK + RUN_WORK * _runs(request)


def prior_seconds(request: BuildRequest, facts: NodeFacts, *, emulated: bool, share: float = 1.0) -> float:
    """A first estimate: reference work (or ``share`` of it) scaled by node speed; under
    emulation only the RUN work is slowed by the QEMU factor. The fixed part (resolving the
    base, exporting, pushing) runs natively whatever the platform: an image that RUNs nothing
    executes nothing under QEMU."""
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

def apply_estimates(options: Sequence[Option], answers: Sequence[tuple[float, str] | None]) -> list[Option]:
    """``options`` with the refined estimates the pipeline got from ``archfleet_estimate``:
    ``answers[i]`` is ``(seconds, basis)`` for ``options[i]``, or None to keep its offer's estimate.
    Seconds are rounded to 10 ms (the plan prints them)."""
    if len(options) != len(answers):
        raise ValueError("one answer per option")
    return [opt if got is None else attrs.evolve(opt, estimate=round(got[0], 2), basis=got[1])
            for opt, got in zip(options, answers)]


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
