"""Run a plan: every chosen option at once, fallback on node failures, nothing pushed half-way.

The executor calls no plugin itself: the pipeline hands it three functions — ``connect(node)``
(a transport, through ``archfleet_connect``), ``run(option, job)`` (the build, through
``archfleet_run``) and ``replan(platform, tried, down, wait)`` (the next-best option, from the
planner) — and it does the rest: build slots per node, other runs' leases, the push gate,
cancellation, the timeline.

What happens when a platform's option raises is decided by the error's type
(:mod:`archfleet.errors`), never by its text:

- ``retry_elsewhere`` (:class:`InfrastructureError`): the node is marked down for this run and
  the platform is re-planned on its next-best option; with none left, the platform has failed.
- anything else: the platform has failed for good. Without ``--allow-partial`` the push gate
  breaks and every other platform still running is cancelled at once (its transport kills the
  engine CLI or closes the SSH channel; its build slot and lease are released): nothing is
  pushed to the tags, and the run reports the failing platform, not the ones it stopped. With
  ``--allow-partial`` the others go on and push without it.
- :class:`Aborted` (the push gate broke) and cancellation are how the *other* platforms stop:
  they are shown as "cancelled", never reported as failures of their own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Sequence

import attrs

from typing import Awaitable, Callable, Mapping

from . import leases
from .errors import Aborted, ArchfleetError, BuildFailed
from .model import BuildRequest, NodeFacts, Option, PlatformResult
from .planner import Plan
from .platforms import Platform
from .progress import Reporter, guard


class PushGate:
    """Opens when every platform is built; breaks when one fails for good.

    Strategies await :meth:`wait` between building and pushing, so a failed platform means
    nothing at all was pushed (children included).
    """

    def __init__(self, platforms: Sequence[Platform]):
        self._platforms = frozenset(platforms)
        self._waiting = set(platforms)
        self._event = asyncio.Event()
        self._failed: str | None = None

    def built(self, platform: Platform) -> None:
        """``platform`` is built (or left out with --allow-partial): when none is left, the gate opens."""
        self._waiting.discard(platform)
        if not self._waiting:
            self._event.set()

    def fail(self, why: str) -> None:
        """A platform failed for good: the gate breaks, and every :meth:`wait` raises :class:`Aborted` with ``why``."""
        if self._failed is None:
            self._failed = why
        self._event.set()

    @property
    def failed(self) -> str | None:
        """Why the gate broke (the platform that failed for good), or None."""
        return self._failed

    def alone(self, platform: Platform) -> bool:
        """True when the gate holds ``platform`` and nothing else (a one-platform build), and it
        has not broken."""
        return self._failed is None and self._platforms == frozenset({platform})

    async def wait(self) -> None:
        """Return once every platform is built; raise :class:`Aborted` if the gate broke."""
        await self._event.wait()
        if self._failed is not None:
            raise Aborted(self._failed)


@attrs.define
class Job:
    """What ``archfleet_run`` gets besides the option and request: the work of building one
    option on one node (its transport, the node's facts, where to report, the push gate)."""

    option: Option
    facts: NodeFacts
    transport: object
    reporter: Reporter
    gate: PushGate
    slot: "Slot | None" = None

    @property
    def node(self) -> str:
        """The name of the node this job runs on."""
        return self.option.node

    def log(self, line: str) -> None:
        """One line of build output from the node."""
        self.reporter.log(self.option, line)

    def status(self, state: str) -> None:
        """A state change: building, pushing, ..."""
        self.reporter.status(self.option, state)

    def alone(self) -> bool:
        """True when this is the build's only platform: nothing else waits at the push gate, so
        its push may start while its export is still read (:meth:`ready_to_push` returns at
        once). An export that then fails leaves at most some of its own blobs in the registry,
        named by no manifest, as a push cut off does; with more platforms the gate opens only
        once every export is read, so a platform that fails there has let nothing be pushed."""
        return self.gate.alone(self.option.platform)

    async def ready_to_push(self) -> None:
        """Mark this platform built, free its build slot, wait until all are built (raises if
        one failed). The slot is freed first: a build waiting for a slot must not wait on us."""
        if self.slot is not None:
            self.slot.release()
        self.gate.built(self.option.platform)
        await self.gate.wait()


class Slot:
    """One of a node's ``max_builds`` build slots, released at most once."""

    def __init__(self, semaphore: asyncio.Semaphore, on_release=None):
        self._semaphore = semaphore
        self._held = False
        self._on_release = on_release

    async def acquire(self) -> None:
        """Wait for a free build slot on the node."""
        await self._semaphore.acquire()
        self._held = True

    def release(self) -> None:
        """Give the slot back (at most once; later calls do nothing) and say so to the executor."""
        if self._held:
            self._held = False
            self._semaphore.release()
            if self._on_release:
                self._on_release()


@attrs.frozen
class Attempt:
    """One option run for one platform, for the timeline: seconds from the start of the run."""

    option: Option
    start: float
    end: float
    outcome: str  # "done" | "node failed: ..." | "failed: ..." | "cancelled"


@attrs.frozen
class Failure:
    """A platform that failed for good: the option tried last and the error it raised."""

    platform: Platform
    option: Option
    error: ArchfleetError

    def line(self) -> str:
        """One line naming the platform, where it failed and why."""
        return f"{self.platform} failed on {self.option}: {self.error}"


@attrs.frozen
class Outcome:
    """What a run produced: the platforms' results, the failures for good (in the order they happened; the first stopped the others), the re-plans (platform, option left, why) and every attempt for the timeline."""
    results: tuple[PlatformResult, ...]
    failures: tuple[Failure, ...]  # in the order they happened; the first one stopped the others
    replans: tuple[tuple[Platform, str, str], ...]  # platform, from option, why
    attempts: tuple[Attempt, ...] = ()


Connect = Callable[[str], Awaitable[object]]
RunOption = Callable[[Option, "Job"], Awaitable[PlatformResult]]
Replan = Callable[[Platform, Sequence[Option], Mapping[str, str], Mapping[str, float]], "Option | None"]


class Executor:
    """Runs one plan (:meth:`run`). ``connect``, ``run_option`` and ``replan`` come from the
    pipeline (module doc); ``facts`` are the probed nodes; ``reporter`` gets progress."""

    def __init__(self, request: BuildRequest, facts: dict[str, NodeFacts], reporter: Reporter, *,
                 connect: Connect, run_option: RunOption, replan: Replan):
        self.request = request
        self._connect = connect
        self._run_option = run_option
        self._replan = replan
        self.facts = facts
        self.reporter = guard(reporter)  # progress output never fails a build
        self.down: dict[str, str] = {}
        self._transports: dict[str, object] = {}
        self._connecting: dict[str, asyncio.Future] = {}
        self.replans: list[tuple[Platform, str, str]] = []
        self.attempts: list[Attempt] = []
        self.t0 = time.monotonic()
        self._slots = {name: asyncio.Semaphore(max(1, f.node.max_builds)) for name, f in facts.items()}
        self._busy: dict[str, dict[Platform, tuple[float, float]]] = {name: {} for name in facts}  # started, estimate
        self._lease_drops: list[asyncio.Future] = []
        self._dropping: dict[str, list[asyncio.Future]] = {}  # node -> its leases being dropped

    async def _transport(self, node: str):
        """The node's transport, asked for once per run (the pipeline's ``connect``); its plugin
        owns it and closes it when the command ends."""
        if node in self._transports:
            return self._transports[node]
        if node not in self._connecting:
            self._connecting[node] = asyncio.ensure_future(self._connect(node))
        transport = await asyncio.shield(self._connecting[node])
        self._transports[node] = transport
        return transport

    async def close(self) -> None:
        """Let the leases this run took be dropped (each node's transport stays open: its plugin
        closes it at the end of the command)."""
        if self._lease_drops:
            await asyncio.gather(*self._lease_drops, return_exceptions=True)

    def _wait_for_slot(self, node: str) -> float:
        """Seconds until ``node`` has a free build slot: from this run's builds there now and the
        slots other archfleet runs held at the probe (their leases), less the time since."""
        now = time.monotonic()
        own = [max(est - (now - start), 0.0) for start, est in self._busy[node].values()]
        others = [b - (now - self.t0) for b in self.facts[node].busy]
        taken = sorted(own + [b for b in others if b > 0])
        cap = max(1, self.facts[node].node.max_builds)
        if len(taken) < cap:
            return 0.0
        return taken[len(taken) - cap]  # a slot frees when the count running drops below cap

    async def _claim_slot(self, option: Option, transport) -> "leases.Held":
        """Honour ``max_builds`` across runs: claim a slot on the node (:func:`archfleet.leases.claim`:
        a lease is written, under the lease directory's lock, only while fewer than
        ``max_builds`` are live, this run's own builds' included), and while the node's slots are
        all held, wait and claim again, at most twice the longest wait the probe saw (a minute at
        least) and never past :func:`archfleet.leases.wait_limit`'s cap (five minutes or this
        build's own estimate, whichever is longer: leases are anyone's input); then build anyway
        and say so. The lease held (renewed until the slot frees)."""
        facts = self.facts[option.node]
        cap = max(1, facts.node.max_builds)
        # the leases this run's finished builds there are dropping: gone before this one counts
        # (else it waits on its own run's lease, and says other runs hold it)
        dropping = [d for d in self._dropping.get(option.node, ()) if not d.done()]
        if dropping:
            await asyncio.gather(*(asyncio.shield(d) for d in dropping), return_exceptions=True)
        give_up = None
        said = False
        while True:
            got = await leases.claim(transport, facts.node, option.estimate, cap)
            if not got.full:
                return leases.Held(transport, facts.node, got.name)
            now = time.monotonic()
            if give_up is None:
                give_up = now + leases.wait_limit(tuple(facts.busy) + got.busy, option.estimate)
            if now > give_up:
                self.reporter.status(option, "other archfleet runs still hold the slots; building anyway")
                got = await leases.claim(transport, facts.node, option.estimate, 0)
                return leases.Held(transport, facts.node, got.name)
            if not said:
                mine = len(self._busy[option.node]) - 1  # this run's other builds there hold leases too
                self.reporter.status(
                    option, f"waiting for a slot other archfleet runs hold (~{got.busy[0]:.0f}s)"
                    if mine < len(got.busy) else "waiting for a slot this run's other builds there hold")
                said = True
            await asyncio.sleep(min(5.0, max(1.0, got.busy[0])))

    def _slot_freed(self, option: Option, lease: list) -> None:
        self._busy[option.node].pop(option.platform, None)
        if lease:
            # a node marked down may still answer (its engine died, not its sshd): try briefly;
            # if it does not, the lease goes stale when its heartbeat stops
            timeout = 2 if option.node in self.down else 5
            drop = asyncio.ensure_future(lease[0].release(timeout))
            self._lease_drops.append(drop)
            self._dropping.setdefault(option.node, []).append(drop)

    async def _run_one(self, option: Option, gate: PushGate, started: list[float]) -> PlatformResult:
        lease: list = []  # the leases.Held once there is a transport
        slot = Slot(self._slots[option.node], lambda: self._slot_freed(option, lease))
        if self._slots[option.node].locked():
            self.reporter.status(option, "waiting for a build slot")
        await slot.acquire()
        started[0] = time.monotonic()  # the timeline shows the work, not the wait for a slot
        self._busy[option.node][option.platform] = (started[0], option.estimate)
        try:
            transport = await self._transport(option.node)
            # other archfleet runs probing this node see the slot taken from now on; one that
            # claims at the same moment finds this lease and waits (or this run waits for it)
            lease.append(await self._claim_slot(option, transport))
            started[0] = time.monotonic()  # the timeline shows the work, not the wait for a slot
            job = Job(option, self.facts[option.node], transport, self.reporter, gate, slot)
            return await self._run_option(option, job)
        finally:
            slot.release()

    async def _platform(self, platform: Platform, first: Option,
                        gate: PushGate, last: dict[Platform, Option]) -> PlatformResult:
        option = first
        tried: list[Option] = []
        while True:
            tried.append(option)
            last[platform] = option
            self.reporter.status(option, "starting")
            started = [time.monotonic()]

            def attempt(outcome: str) -> None:
                self.attempts.append(Attempt(option, started[0] - self.t0, time.monotonic() - self.t0, outcome))

            try:
                result = await self._run_one(option, gate, started)
                gate.built(platform)  # a strategy that never pushes (nothing to wait for) still counts
                attempt("done")
                self.reporter.done(option, result)
                return result
            except Aborted:
                attempt("cancelled")
                self.reporter.status(option, f"cancelled: {gate.failed or 'another platform failed'}")
                raise
            except asyncio.CancelledError:
                attempt("cancelled")
                self.reporter.status(option, f"cancelled: {gate.failed}" if gate.failed else "cancelled")
                raise
            except ArchfleetError as exc:
                if not exc.retry_elsewhere:
                    attempt(f"failed: {exc}")
                    self.reporter.failed(option, str(exc))
                    raise
                attempt(f"node failed: {exc}")
                node = getattr(exc, "node", None) or option.node
                self.down.setdefault(node, str(exc))
                # the pipeline asks the planner again without the failed node: the next-best
                # option now, its estimate plus the wait for a slot on its node
                waits = {n: self._wait_for_slot(n) for n in self.facts if n not in self.down}
                nxt = self._replan(platform, tuple(tried), dict(self.down), waits)
                if nxt is None:
                    self.reporter.failed(option, str(exc))
                    raise BuildFailed(f"{exc}; no other option left") from None
                self.replans.append((platform, str(option), str(exc)))
                self.reporter.replanned(option, nxt, f"{exc} (after {time.monotonic() - started[0]:.1f}s)")
                option = nxt
            except Exception as exc:  # a bug: reported as an internal error, after the others stopped
                attempt(f"failed: {type(exc).__name__}: {exc}")
                self.reporter.failed(option, f"{type(exc).__name__}: {exc}")
                raise

    async def run(self, plan: Plan) -> Outcome:
        """Run every chosen option at once; see the module docstring for what a failure does.
        Raises what a platform raised only when it is not an :class:`ArchfleetError` (a bug)."""
        platforms = [s.option.platform for s in plan.chosen]
        gate = PushGate(platforms)
        tasks: dict[Platform, asyncio.Task] = {}
        last: dict[Platform, Option] = {}
        failed_first: list[Platform] = []  # platforms that failed for good, in order

        def on_done(platform):
            def callback(task: asyncio.Task):
                if task.cancelled() or task.exception() is None or isinstance(task.exception(), Aborted):
                    return
                failed_first.append(platform)
                if self.request.allow_partial and isinstance(task.exception(), ArchfleetError):
                    gate.built(platform)  # the others may push without it
                    return
                gate.fail(f"{platform} failed")
                for other, t in tasks.items():
                    if other != platform and not t.done():
                        t.cancel()
            return callback

        for s in plan.chosen:
            task = asyncio.create_task(self._platform(s.option.platform, s.option, gate, last))
            tasks[s.option.platform] = task
            task.add_done_callback(on_done(s.option.platform))
        try:
            await asyncio.gather(*tasks.values(), return_exceptions=True)
        finally:
            await self.close()
        results: list[PlatformResult] = []
        for t in tasks.values():
            if not t.cancelled() and t.exception() is None:
                results.append(t.result())
        failures = []
        for p in failed_first:
            exc = tasks[p].exception()
            if not isinstance(exc, ArchfleetError):
                raise exc
            failures.append(Failure(p, last[p], exc))
        return Outcome(tuple(results), tuple(failures), tuple(self.replans), tuple(self.attempts))
