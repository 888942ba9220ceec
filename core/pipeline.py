"""The spine of archfleet, and the only caller of plugins.

One build flows one way through these stages, each a function over frozen values::

    request -> inventory -> probe -> offer -> estimate -> plan -> run -> verify -> merge -> learn

(while the nodes are probed, the base images are resolved in their registries and the plugins
prepare what needs no node: :func:`make_plan`)

Learning (writing what was measured to the user's caches) happens in :func:`learn` only: the
stages that measure return what they measured (``NodeFacts.score_measured``,
``PlatformResult.transfer``, ``ChildImage.scans``, the results' seconds) and :func:`learn` keeps
it, after the probe for the scores and at the end of a build for the rest.

The CLI makes the request (:class:`~archfleet.model.BuildRequest`) and the configuration
(:class:`~archfleet.inventory.Config`), then calls :func:`run_command` with one of the commands
here. Every hook is called from this module, through :class:`archfleet.manager.Hooks` (pluggy);
the planner, the inventory and the executor call none: the executor gets ``connect``, ``run``
and ``replan`` from :func:`build`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import platform as _platform
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Awaitable, Callable, Mapping, Sequence, TypeVar

import attrs

from . import buildcache
from . import index as index_mod
from . import inventory
from . import learn as learning
from . import outputs as outputs_mod
from . import platforms as plat
from .buildkey import resolve_bases
from .errors import (ArchfleetError, EnvironmentProblem, Interrupted, PlatformsFailed, UsageError,
                     VerificationFailed)
from .context import cache_days
from .dockerfile import analyse
from .engines import FEATURE_FIX, lacking, needs, why_lacking
from .executor import Executor, Failure
from .history import HistoryView, view_for
from .inventory import Config
from .learn import Lessons
from .manager import Hooks
from .model import BuildRequest, ChildImage, NodeFacts, NodeSpec, Option, PlatformResult
from .planner import (Plan, apply_estimates, apply_pins, check_pin_strategies, check_pins, next_best, node_speed,
                      schedule)
from .platforms import Platform
from .progress import Reporter, guard
from .reference import Reference, parse_reference
from .registry import RegistryClient
from .session import Session
from .steps import read_by

T = TypeVar("T")


async def run_command(hooks: Hooks, work: Callable[[Session], Awaitable[T]]) -> T:
    """Run one command (``work``, given this command's :class:`Session`), then end the session
    whatever happened (``archfleet_session_end``: plugins close their connections)."""
    session = Session()
    try:
        return await work(session)
    finally:
        session.ended = True
        await hooks.session_end(session)


def load_config(hooks: Hooks, *, nodes: str | None = None, engine_cli: str | None = None, local: bool = True,
                note: Callable[[str], None] | None = None) -> Config:
    """Request, the nodes half: the nodes file found, trusted and validated with the keys every
    node has and those each transport's plugin declares (``archfleet_node_keys``); see
    :func:`archfleet.inventory.make_config`. Raises :class:`UsageError` (one line, ``file:line``)."""
    return inventory.make_config(nodes=nodes, engine_cli=engine_cli, local=local, note=note, keys=hooks.node_keys())


def nodes_of(hooks: Hooks, config: Config, session: Session) -> list[NodeSpec]:
    """Inventory: every enabled node, as the plugins contribute them (``archfleet_add_nodes``),
    names unique, ``--node`` selections applied (:func:`archfleet.inventory.combine`)."""
    return inventory.combine(hooks.add_nodes(config, session), config)


async def probe(hooks: Hooks, config: Config, session: Session,
                nodes: list[NodeSpec] | None = None) -> dict[str, NodeFacts]:
    """Probe: every enabled node's facts (``nodes``, else the inventory's), all at once.
    Unreachable nodes are kept, marked. The scores the probe measured are learned as soon as it
    is over (:func:`learn`), so ``ls``, ``plan``, ``doctor`` and a build that fails later all
    keep them."""
    if nodes is None:
        nodes = nodes_of(hooks, config, session)
    results = await asyncio.gather(*(hooks.probe(n, config, session) for n in nodes))
    await learn(Lessons(probed=results))
    return {f.name: f for f in results}


async def learn(lessons: Lessons) -> None:
    """Learn: keep what a command measured for the ones after it (:func:`archfleet.learn.keep`,
    in a thread): the scores after the probe, and at the end of a build its history rows, the
    link rates of its context syncs and the layer scans of its verification. The only stage
    that writes the user's caches; it never fails the command."""
    await asyncio.to_thread(learning.keep, lessons)


async def offers(hooks: Hooks, request: BuildRequest, facts: Mapping[str, NodeFacts],
                 session: Session | None = None) -> list[Option]:
    """Offer: every strategy's options for every platform (``archfleet_offer``), all asked at
    once and checked (:meth:`archfleet.manager.Hooks.offer`). Each platform is offered with the
    request as it sees it (:meth:`~archfleet.model.BuildRequest.for_platform`: its own Dockerfile)."""
    all_facts = tuple(facts.values())
    answers = await asyncio.gather(*(hooks.offer(p, request.for_platform(p), all_facts, session)
                                     for p in request.platforms))
    return [opt for got in answers for opt in got]


Histories = Mapping[Platform, "HistoryView | None"]


def estimates(hooks: Hooks, options: Sequence[Option], request: BuildRequest,
              facts: Mapping[str, NodeFacts], history: "HistoryView | Histories | None") -> list[Option]:
    """Estimate: each option's seconds refined by the plugins (``archfleet_estimate``), with the
    request and the history view of the option's platform (``history``: one view for every
    platform, or one per platform as :func:`histories` makes them)."""
    def view(platform):
        return history.get(platform) if isinstance(history, Mapping) else history

    answers = [hooks.estimate(o, request.for_platform(o.platform), facts.get(o.node), view(o.platform))
               for o in options]
    return apply_estimates(options, answers)


def histories(request: BuildRequest) -> dict[Platform, HistoryView | None]:
    """The history view of each platform: keyed by the context and the platform's own
    Dockerfile, one view per Dockerfile (:func:`archfleet.history.view_for`). Blocking (it walks
    the context once per Dockerfile): call it in a thread."""
    by_file = {path: view_for(request.for_platform(ps[0])) for path, ps in request.by_dockerfile()}
    return {p: by_file[request.dockerfile_for(p)] for p in request.platforms}


def not_offered(request: BuildRequest, facts: Mapping[str, NodeFacts],
                options: Sequence[Option]) -> tuple[tuple[Platform, str, str], ...]:
    """(platform, node, why) for each node that runs or emulates a platform but got no option
    for it because its engine cannot do what the build needs (:func:`archfleet.engines.needs`:
    a secret or ssh mount, ``--cache-to ...,mode=max``, ...) or a stage the build needs RUNs on
    a platform the node can neither run nor emulate (a stage pinned with ``FROM
    --platform=...``): what ``archfleet plan`` shows besides the rejected options."""
    offered = {(o.platform, o.node) for o in options}
    out = []
    for p in request.platforms:
        for f in facts.values():
            if not f.can_build or (p, f.name) in offered or (p not in f.native and p not in f.emulated):
                continue
            missing = lacking(f, needs(request.for_platform(p)))
            if missing:  # its engine cannot do what the build asks (a secret mount, --cache-to mode=max)
                out.append((p, f.name, why_lacking(f, missing)))
                continue
            why = analyse(request, p).placement(p, f.native, f.emulated).why_not()
            if why:
                out.append((p, f.name, why))
    return tuple(out)


def unplannable_reason(platform, planned: "Planned") -> str:
    """Why nobody can build ``platform``, and what to do (one line).

    Per node: unreachable, no builder, an engine that cannot do what the Dockerfile asks (here-
    documents, secret or ssh mounts: :func:`archfleet.engines.needs`), a QEMU handler that is registered but unusable in
    containers (no ``F`` flag: ``archfleet binfmt --install`` re-registers it), a platform no QEMU
    handler emulates (an amd64 level above the CPU's: installing a handler would not help), or
    no handler at all."""
    pinned = [o for o in planned.pinned_out if o.platform == platform]
    if pinned:
        # a pinned node that could not be used says why (a refused host key, say), not only
        # which other nodes were offered
        pins = planned.request.pins if planned.request else ()
        named = {p.node for p in pins if p.node and p.platform in (None, platform)}
        why = [f"{f.name}: unreachable ({f.error})" if not f.reachable else f"{f.name}: {f.error}"
               for f in planned.facts.values() if f.name in named and not f.can_build]
        return (f"no option for {platform} is allowed by --strategy/--node (offered: "
                + ", ".join(str(o) for o in pinned) + ")" + "".join(f"; {w}" for w in why))
    reasons = []
    fix = None
    for f in planned.facts.values():
        problem = dict(f.emulation_problems).get(platform)
        if not f.reachable:
            reasons.append(f"{f.name}: unreachable ({f.error})")
            if f.node.transport == "local":
                fix = fix or f.fix  # this machine's engine: its probe's advice (nodes' is in doctor)
        elif not f.builder:
            reasons.append(f"{f.name}: {f.error}")
        elif planned.request and (missing := lacking(f, needs(planned.request))):
            reasons.append(f"{f.name}: {why_lacking(f, missing)}")  # its engine cannot do what the Dockerfile asks
            fix = fix or FEATURE_FIX.get(missing[0].feature)
        elif planned.request and (platform in f.native or platform in f.emulated) and (
                why := analyse(planned.request, platform).placement(platform, f.native, f.emulated).why_not()):
            reasons.append(f"{f.name}: {why}")  # it runs the target, not a stage pinned elsewhere
        elif problem:
            reasons.append(f"{f.name}: {problem}")
            where = "this machine" if f.node.transport == "local" else f"node {f.name}"
            fix = fix or f"run `archfleet binfmt --install {platform}` as root on {where}: it re-registers the handler with F"
        elif not plat.emulable(platform):
            reasons.append(f"{f.name}: its CPU does not run {platform}" + (
                f" (x86-64-{platform.variant} needs {plat.X86_64_LEVEL_NEEDS[int(platform.variant[1:])]})"
                if platform.architecture == "amd64" and platform.variant else "")
                + " and no QEMU handler emulates it")
        else:
            reasons.append(f"{f.name}: not native and no qemu-{platform.qemu_arch} handler")
            fix = fix or f"run `archfleet binfmt --install {platform}`"
    return f"no node can build {platform} ({'; '.join(reasons) or 'no nodes'})" + (f"; {fix}" if fix else "")


def stale_context(planned: "Planned") -> str | None:
    """One line naming the context files whose contents changed while their size and mtime
    did not (:func:`archfleet.filedigests.unseen_change`) and that the build reads (a COPY,
    ADD or bind mount can copy it, or it is the Dockerfile or the ignore file), or None.
    BuildKit's transfer of a
    local context compares only those, so a build from this machine's context directory gets
    the old copy (plain ``docker build`` too), and archfleet would push that image under the new
    contents' reuse key and keep reusing it."""
    request = planned.request
    pairs = list(planned.histories) or (
        [(request.platforms[0], planned.history)] if request is not None and request.platforms else [])
    found: set[str] = set()
    for platform, view in pairs:
        files = view.files if view is not None else None
        if files is None or files.digests is None or not files.digests.stale:
            continue
        # what BuildKit reads whatever the COPYs: the Dockerfile (also one outside the context:
        # an absolute path) and the ignore file; else only a file a COPY can read
        always = {p for p in files.digests.stale
                  if p.startswith("/") or p == files.dockerfile or p.endswith(".dockerignore")}
        others = [p for p in files.digests.stale if p not in always]
        try:
            found.update(always, read_by(files, analyse(request, platform), others))
        except Exception:  # planning read it; should it not now, every stale file counts
            found.update(files.digests.stale)
    stale = sorted(found)
    if not stale:
        return None
    named = ", ".join(stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
    what = "file" if any(p.startswith("/") for p in stale) else "context file"  # a -f Dockerfile outside it
    it = "its contents" if len(stale) == 1 else "their contents"
    return (f"{what} {named}: {it} changed but not {'its' if len(stale) == 1 else 'their'} size and modification "
            f"time; BuildKit compares only those and would build its old copy: touch "
            f"{'it' if len(stale) == 1 else 'them'} and build again")


def builds_from_local_buildkit(planned: "Planned") -> bool:
    """Whether a chosen option builds in this machine's docker engine (BuildKit) straight from
    the context directory (SSH nodes build from a synced tree of their own, podman reads the
    files)."""
    for s in planned.plan.chosen:
        facts = planned.facts.get(s.option.node)
        if facts is not None and facts.node.transport == "local" and facts.node.engine == "docker":
            return True
    return False


@attrs.frozen
class Planned:
    """What the plan stage produced: the nodes' facts, the options after estimates and pins (what the plan and fallbacks choose from), the plan, the history view, the options the pins left out, and the request."""
    facts: dict[str, NodeFacts]
    options: tuple[Option, ...]  # after estimates and pins: what the plan and fallbacks use
    plan: Plan
    history: HistoryView | None = None  # the first platform's (every platform's, with one Dockerfile)
    pinned_out: tuple[Option, ...] = ()  # offered, but excluded by --strategy/--node
    request: BuildRequest | None = None  # what was planned (says why a node cannot run a stage)
    # (platform, node, why): nodes that run or emulate the platform but cannot run a stage it needs
    not_offered: tuple[tuple[Platform, str, str], ...] = ()
    # each platform's history view (keyed by its own Dockerfile); empty: ``history`` for all
    histories: tuple[tuple[Platform, HistoryView | None], ...] = ()
    # (node, note): where a feature the build asks for is degraded (archfleet.buildcache.notes)
    notes: tuple[tuple[str, str], ...] = ()

    def history_for(self, platform: Platform) -> HistoryView | None:
        """The history view ``platform``'s estimates read and its result is recorded in."""
        return dict(self.histories).get(platform, self.history)


def check_request(hooks: Hooks, request: BuildRequest, config: Config, session: Session) -> list[NodeSpec]:
    """What the input alone decides, checked before any node is probed or registry asked: the
    Dockerfile, and the ``--node``/``--strategy`` pins (a platform being built, a node the
    inventory has, ``cross`` only for a Dockerfile with a stage on ``$BUILDPLATFORM`` or pinned to a
    platform of its own), and for a push or ``-o`` the directory exports are spooled in. Raises
    :class:`UsageError` (:class:`EnvironmentProblem` for the spool directory); returns the
    inventory's enabled nodes. Cheap: call it again freely."""
    # a Dockerfile error is the user's: report it before probing anything (each platform's file)
    analyses = {p: analyse(request, p) for p in request.platforms}
    if request.push or request.outputs:
        from .publish import check_spool_dir

        check_spool_dir()
    nodes = nodes_of(hooks, config, session)
    check_pins(request.pins, request.platforms, [n.name for n in nodes])
    for pin in request.pins:
        if pin.strategy != "cross" or "cross" not in hooks.strategies():
            continue
        for p in ([pin.platform] if pin.platform is not None else request.platforms):
            if not analyses[p].can_cross:
                raise UsageError(f"{pin.flag}: {request.dockerfile_for(p).name} cannot cross-compile: no stage it "
                                 "builds runs on $BUILDPLATFORM or a platform of its own (use "
                                 "FROM --platform=$BUILDPLATFORM for the build stages, or drop --strategy cross)")
    return nodes


async def resolve(request: BuildRequest, client: RegistryClient | None = None) -> BuildRequest:
    """Analyse, the registry's half: ``request`` with its base images resolved in their
    registries (``BuildRequest.bases``, :func:`archfleet.buildkey.resolve_bases`), which the reuse
    key of every platform needs. Only for a build that pushes and pulls (the key exists only
    then); otherwise, or when a base cannot be resolved, ``request`` as it is. ``client``: the
    build's registry client, else one of its own."""
    if not (request.push and request.pull and request.tags):
        return request
    if client is None:
        async with RegistryClient(request.insecure_registries) as own:
            return await resolve(request, own)
    bases = await resolve_bases(client, request)
    return attrs.evolve(request, bases=bases) if bases else request


FIRST_STEPS = 4  # loop turns: a task, the tasks it gathers, theirs, and a subprocess spawned


async def first_steps(turns: int = FIRST_STEPS) -> None:
    """Let the tasks just created take their first steps before the caller goes on: a node's
    probe starts its engine CLIs there (tasks within gathered tasks, :data:`FIRST_STEPS` deep),
    which then run in their own processes while this thread does the rest. Ordering only: it
    changes when things start, never what they do (issue 17: the build started ~20 ms
    sooner)."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def make_plan(hooks: Hooks, request: BuildRequest, config: Config, session: Session,
                    client: RegistryClient | None = None) -> Planned:
    """Inventory, probe, resolve, offer, estimate and plan, after :func:`check_request`. The
    base images are resolved (:func:`resolve`) and the plugins prepare (``archfleet_prepare``)
    while the nodes are probed; each platform's last pushed child is looked up in history for a
    warm start on another node (``BuildRequest.warm``, :func:`archfleet.buildcache.warm_sources`). A pinned strategy
    no plugin names is refused once the offers are in (a plugin's strategy name need not be its
    plugin name). ``Planned.request`` is the request the rest of the build uses (bases resolved)."""
    nodes = check_request(hooks, request, config, session)
    # the probe first: its engine CLIs and SSH handshakes then run in other processes and on
    # the network while this thread resolves the bases and reads history
    probing = asyncio.create_task(probe(hooks, config, session, nodes))
    resolving = preparing = None
    try:
        await first_steps()
        view_task = asyncio.create_task(asyncio.to_thread(histories, request))
        resolving = asyncio.create_task(resolve(request, client))
        preparing = asyncio.create_task(hooks.prepare(request, session))
        facts = await probing
        request = await resolving
        await preparing
    finally:
        for task in (probing, resolving, preparing):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    views = await view_task
    warm = await asyncio.to_thread(buildcache.warm_sources, request, views)
    if warm:
        request = attrs.evolve(request, warm=warm)  # each platform's last child, for a warm start elsewhere
    offered = estimates(hooks, await offers(hooks, request, facts, session), request, facts, views)
    check_pin_strategies(request.pins, hooks.strategies() | {o.strategy for o in offered})
    options = apply_pins(offered, request.pins)
    capacity = {name: f.node.max_builds for name, f in facts.items() if f.can_build}
    busy = {name: f.busy for name, f in facts.items() if f.busy}  # slots other archfleet runs hold
    plan = schedule(request.platforms, options, capacity, busy)
    notes = tuple((f.name, note) for f in facts.values() for note in buildcache.notes(request, f))
    return Planned(facts, tuple(options), plan, views.get(request.platforms[0]),
                   tuple(o for o in offered if o not in options), request, not_offered(request, facts, offered),
                   tuple(views.items()), notes)


async def plan_only(hooks: Hooks, request: BuildRequest, config: Config, session: Session,
                    registry: RegistryClient | None = None) -> Planned:
    """``archfleet plan``: :func:`make_plan`, then learn what planning measured besides the
    probe's scores (the context's file digests, :mod:`archfleet.filedigests`), as a build
    learns them at its end."""
    planned = await make_plan(hooks, request, config, session, registry)
    await learn(Lessons(history=planned.history, histories=planned.histories))
    return planned


async def connect(hooks: Hooks, facts: NodeFacts, session: Session):
    """A transport to the node of ``facts`` (``archfleet_connect``), owned by its plugin for the
    rest of the command."""
    return await hooks.connect(facts.node, facts, session)


@attrs.frozen
class BuildSummary:
    """What a build produced, for the CLI, ``--metadata-file`` and ``--report``: each platform's result and verified child, the index (digest, media type, size in bytes) and its tags, the plan, the re-plans, the attempts, and the seconds it all took."""
    results: tuple[PlatformResult, ...]
    children: tuple[ChildImage, ...]
    index_digest: str | None
    index_media_type: str | None
    index_size: int
    tags: tuple[str, ...]
    planned: Planned
    replans: tuple[tuple, ...]
    seconds: float
    attempts: tuple = ()


@attrs.define
class RunState:
    """What a build has done that an interrupt cannot undo, filled in as it happens: the caller
    keeps it, so that a Ctrl-C arriving after the index was pushed (while history is recorded,
    the session ends or the CLI writes its files) is reported as such, not as a bare
    "interrupted"."""

    index_digest: str | None = None
    tags: tuple[str, ...] = ()

    def interrupted(self) -> str:
        """The one line for an interrupt at this point."""
        if self.index_digest:
            return f"interrupted after the index {self.index_digest} was pushed to {', '.join(self.tags)}"
        return "interrupted"


async def build(hooks: Hooks, request: BuildRequest, config: Config, reporter: Reporter, session: Session,
                state: RunState | None = None) -> BuildSummary:
    """Plan, run, verify and publish ``request``; ``state`` (if given) records what was published.

    A platform that fails for good stops the others and raises :class:`PlatformsFailed` naming
    it (one line; nothing reaches the tags). With ``--allow-partial`` a platform that failed to
    build or whose child fails verification is left out of the index, and said so. Ctrl-C
    before the tags start moving leaves them untouched; once they do, the moves are finished
    first and :class:`Interrupted` says that the tags were moved (see :func:`hold_interrupts`).
    A node that fails mid-build is dropped and the platform asked of the planner again
    (:func:`archfleet.planner.next_best` over the options left).
    """
    started = time.monotonic()
    reporter = guard(reporter)  # progress output never fails a build
    tags = [parse_reference(t) for t in request.tags]
    cache_days()  # a bad ARCHFLEET_NODE_CACHE_DAYS is a usage error now, not mid-build
    if request.push and not tags:
        raise UsageError("--push needs at least one -t/--tag")
    async with RegistryClient(request.insecure_registries) as client, outputs_mod.spools():
        session.registry = client  # plugins that read the registry share it (and what it read)
        planning = asyncio.create_task(make_plan(hooks, request, config, session, client))
        try:
            await first_steps()  # the plan's probe starts its processes before the registry is asked
            # Fail before building anything when a registry we will write to (the tags, the
            # --cache-to refs) is not there or refuses us.
            writes = (tags if request.push else []) + [
                parse_reference(c.ref, what="--cache-to") for c in request.cache_to if c.kind == "registry"]
            await asyncio.gather(*(client.check_access(t, push=True) for t in _one_per_repo(writes)))
            planned = await planning
        finally:
            if not planning.done():
                planning.cancel()
                # let the probe kill and reap its helper processes before the error is reported,
                # rather than under asyncio.run's final cancellation
                await asyncio.gather(planning, return_exceptions=True)
            elif not planning.cancelled():
                planning.exception()  # the registry's error is the one to report; mark this one seen
        request = planned.request or request  # its base images resolved
        stale = stale_context(planned)
        if stale and builds_from_local_buildkit(planned):
            raise UsageError(stale)  # before anything is built: BuildKit would build the old contents
        missing = planned.plan.unplannable
        if missing:
            raise EnvironmentProblem("; ".join(unplannable_reason(p, planned) for p, _ in missing))
        reporter.planned(planned.plan)
        used = {s.option.node for s in planned.plan.chosen}
        for node, note in planned.notes:
            if node in used:
                reporter.warning(f"{node}: {note}")
        options_of: dict[Platform, list[Option]] = {}
        for o in planned.options:
            options_of.setdefault(o.platform, []).append(o)

        def replan(platform: Platform, tried, down, wait) -> Option | None:
            return next_best(options_of.get(platform, ()), tried, down, wait)

        executor = Executor(request, planned.facts, reporter,
                            connect=lambda node: connect(hooks, planned.facts[node], session),
                            run_option=lambda option, job: hooks.run(option, request.for_platform(option.platform),
                                                                     job, session),
                            replan=replan)
        outcome = await executor.run(planned.plan)
        failures = list(outcome.failures)
        if failures and not (request.allow_partial and outcome.results):
            raise failed(failures, pushed_nothing=request.push)
        results = sorted(outcome.results, key=lambda r: request.platforms.index(r.platform))
        children: list[ChildImage] = []
        digest = media_type = None
        size = 0
        if request.push:
            reporter.event("verifying " + ", ".join(str(r.platform) for r in results))
            children, rejected = await verify(client, results, allow_partial=request.allow_partial)
            if rejected:
                failures += rejected
                if not children:
                    raise failed(failures, pushed_nothing=True)
                results = [r for r in results if r.platform not in {f.platform for f in rejected}]
            source = parse_reference(results[0].ref, what="child reference")
            where = ", ".join(str(t) for t in tags)
            # children copied to every repository and the index put there by digest: stoppable,
            # no tag has moved yet; only moving the tags is held against Ctrl-C
            staged = await index_mod.stage_index(client, source, children, tags, annotations=request.annotations,
                                                 child_tags=request.child_tags)
            digest, body, media_type = staged.digest, staged.body, staged.media_type
            with hold_interrupts(f"the index was being pushed to {where}") as held:
                await asyncio.sleep(0)  # a Ctrl-C that came before this point stops here: tags untouched
                await index_mod.move_tags(client, tags, body, media_type, first=staged.child_tags)
                if state is not None:
                    state.index_digest, state.tags = digest, tuple(str(t) for t in tags)
            size = len(body)
            for tag in tags:
                reporter.event(f"pushed {tag} -> {digest}")
                hooks.index_pushed(str(tag), digest)
            if held.interrupted:
                raise Interrupted(f"interrupted after the index {digest} was pushed to {where}")
        try:
            await deliver(hooks, request, config, planned, results, children, client, session, reporter)
        except ArchfleetError as exc:
            if digest and type(exc).__str__ is Exception.__str__:  # the tags moved: say so in the one line
                exc.args = (f"the index {digest} was pushed to {', '.join(map(str, tags))}, then: {exc}",)
            raise
        if failures:
            reporter.warning("left out (--allow-partial): " + "; ".join(f.line() for f in failures))
        for r in results:
            hooks.build_finished(r)
        await learn(Lessons(results=results, history=planned.history, histories=planned.histories,
                            speeds={n: node_speed(f) for n, f in planned.facts.items()},
                            scans=[scan for child in children for scan in child.scans]))
    return BuildSummary(tuple(results), tuple(children), digest, media_type, size, request.tags, planned,
                        outcome.replans, time.monotonic() - started, outcome.attempts)


async def deliver(hooks: Hooks, request: BuildRequest, config: Config, planned: Planned,
                  results: Sequence[PlatformResult], children: Sequence[ChildImage], client: RegistryClient,
                  session: Session, reporter: Reporter) -> None:
    """What the run delivers besides the index, once it is pushed: the caches a node could only
    write inline (``--cache-to``, :func:`archfleet.buildcache.export_inline`), the files
    (``-o``, :mod:`archfleet.outputs`) and the local engine's image (``--load``)."""
    if request.push and request.cache_to:
        builders = {r.platform: ("reuse" if r.option.strategy == "reuse" else
                                 planned.facts[r.option.node].builder if r.option.node in planned.facts else None)
                    for r in results}
        for ref in await buildcache.export_inline(client, request, children, builders):
            reporter.event(f"cache (inline) -> {ref}")
    if request.outputs:
        await _write_outputs(request, results, client, reporter)
    if request.load:
        await _load(hooks, request, config, planned, results, session, reporter)


async def _write_outputs(request: BuildRequest, results: Sequence[PlatformResult], client: RegistryClient,
                         reporter: Reporter) -> None:
    """``-o``: each platform's files (its spool tree, else its child read from the registry:
    a reused platform) into every output (:mod:`archfleet.outputs`)."""
    trees = []
    extra = []
    try:
        for r in results:
            if r.output:
                trees.append(Path(r.output))
            elif r.repository and r.digest:  # not built here (reused): its child in the registry
                work = outputs_mod.workdir()
                extra.append(work)
                trees.append(await outputs_mod.from_registry(client, f"{r.repository}@{r.digest}", work,
                                                             outputs_mod.prefix_for(request, r.platform)))
            else:
                raise EnvironmentProblem(f"--output: no files of {r.platform}: it was neither built here nor pushed")
        await outputs_mod.write(request.outputs, trees)
    finally:
        for work in extra:
            shutil.rmtree(work, ignore_errors=True)
    for out in request.outputs:
        reporter.event(f"wrote {out}")


async def _load(hooks: Hooks, request: BuildRequest, config: Config, planned: Planned,
                results: Sequence[PlatformResult], session: Session, reporter: Reporter) -> None:
    """``--load``: the child of the local engine's platform (or the one platform built) into the
    local engine under each ``-t`` (:mod:`archfleet.outputs`): tagged when it was built here,
    exported from its node and loaded when built elsewhere, pulled by digest when reused."""
    from .engine import auth_config_for
    from .publish import spool_dir
    from .reference import parse_reference as parse
    from .transport import LocalTransport

    target = outputs_mod.load_platform(request, plat.from_uname(_platform.machine()))
    result = next((r for r in results if r.platform == target), None)
    if result is None:
        reporter.warning(f"--load: {target} was not built; nothing loaded")
        return
    spec = config.file_node("local")
    local = LocalTransport("local", spec.docker_host if spec else None)
    names = outputs_mod.tag_names(request.tags)
    facts = planned.facts.get(result.option.node)
    try:
        if facts is not None and facts.node.transport == "local" and facts.node.engine == "docker" and result.image_id:
            ident = await outputs_mod.load_into(local.docker_client, None, result.image_id, names)
        elif facts is not None and result.image_id and result.option.strategy != "reuse":
            from .engines import adapter_for

            transport = await connect(hooks, facts, session)
            work = Path(tempfile.mkdtemp(prefix="archfleet-load-", dir=spool_dir()))
            try:
                archive = work / "image.tar"
                await outputs_mod.spool(adapter_for(facts.node.engine).export(transport, facts, result.image_id),
                                        archive)
                ident = await outputs_mod.load_into(local.docker_client, archive, None, names)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        else:
            ref = parse(f"{result.repository}@{result.digest}", what="child")  # the child, not an index

            def pull() -> str:
                auth = auth_config_for(ref.registry)
                local.docker_client().api.pull(ref.name, tag=ref.digest, auth_config=auth)
                return str(ref)

            ident = await outputs_mod.load_into(local.docker_client, None, await asyncio.to_thread(pull), names)
    finally:
        await local.close()
    reporter.event(f"loaded {target} into the local engine as {', '.join(names) or ident}")


def failed(failures: Sequence[Failure], *, pushed_nothing: bool) -> PlatformsFailed:
    """The one-line error for platforms that failed for good: each named with the option it
    failed on and why (the platforms they stopped are not listed)."""
    text = "; ".join(f.line() for f in failures)
    if pushed_nothing:
        text += "; nothing was pushed to the tags"
    return PlatformsFailed(text, tuple((f.platform, f.error) for f in failures))


async def verify(client: RegistryClient, results: Sequence[PlatformResult], *,
                 allow_partial: bool) -> tuple[list[ChildImage], list[Failure]]:
    """Read every pushed child back (:func:`archfleet.index.verify_child`, all at once; a layer
    the push scanned from the engine's export, ``PlatformResult.scans``, is not read back).

    Returns the verified children in the order of ``results`` and, with ``allow_partial``, the
    platforms whose child failed verification (to be left out of the index). Without it, those
    raise :class:`PlatformsFailed` naming every one. Any other error (the registry refusing or
    failing) concerns every child alike and is raised once, as it is.
    """
    pushed = {scan.digest: scan.scan for r in results for scan in r.scans}  # what the pushes scanned
    got = await asyncio.gather(*(
        index_mod.verify_child(client, parse_reference(r.ref, what="child reference"), r.platform, pushed)
        for r in results
    ), return_exceptions=True)
    children: list[ChildImage] = []
    rejected: list[Failure] = []
    for r, answer in zip(results, got):
        if isinstance(answer, VerificationFailed):
            rejected.append(Failure(r.platform, r.option, answer))
        elif isinstance(answer, BaseException):
            raise answer
        else:
            children.append(answer)
    if rejected and not allow_partial:
        raise failed(rejected, pushed_nothing=True)
    return children, rejected


class _Held:
    interrupted = False


@contextlib.contextmanager
def hold_interrupts(what: str):
    """Hold Ctrl-C (SIGINT, and SIGTERM when the command handles it) while the tags move, so an
    interrupt never leaves the user unsure.

    Moving the tags (:func:`archfleet.index.move_tags`: one small PUT per tag of an index the
    registry already holds) is the one step that cannot be stopped half-way and known: a request
    already sent may have moved a tag although its answer never came. So while this context is
    active, a first SIGINT is only recorded (``held.interrupted``; the caller finishes the push
    and then says the tags were moved), and a second one stops at once with a
    ``KeyboardInterrupt`` whose message says the tags *may* point at the new index (``what``
    names the step). Outside it, SIGINT cancels the run as usual (the CLI's event loop,
    ``cli._run``) and the tags are untouched, or, once they moved, the line says so. Only in the
    main thread, and not when SIGINT is ignored (a background job).
    """
    held = _Held()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    # SIGINT unless it is ignored (a background job); SIGTERM when the command handles it
    # (cli._run does, as it does SIGINT): otherwise it is not this process's to hold
    previous = {}
    handler = signal.getsignal(signal.SIGINT)
    if handler not in (signal.SIG_IGN, None):
        previous[signal.SIGINT] = handler
    handler = signal.getsignal(signal.SIGTERM)
    if callable(handler):
        previous[signal.SIGTERM] = handler
    if not previous:
        yield held
        return

    def on_signal(signum, frame):
        if not held.interrupted:
            held.interrupted = True
            return
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise KeyboardInterrupt(f"interrupted while {what}: the tags may already point at the new index")

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        yield held
    finally:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is on_signal:
                signal.signal(sig, handler)


def _one_per_repo(tags: Sequence[Reference]) -> list[Reference]:
    seen, out = set(), []
    for t in tags:
        if t.name not in seen:
            seen.add(t.name)
            out.append(t)
    return out


def metadata(summary: BuildSummary) -> dict:
    """The ``--metadata-file`` document: buildx's keys where they mean the same, plus ours."""
    doc: dict = {}
    if summary.index_digest:
        doc["containerimage.digest"] = summary.index_digest
        doc["containerimage.descriptor"] = {
            "mediaType": summary.index_media_type, "digest": summary.index_digest, "size": summary.index_size,
        }
    if summary.tags:
        doc["image.name"] = ",".join(summary.tags)
    children = {c.platform: c for c in summary.children}
    request = summary.planned.request
    estimates = {s.option.platform: s.option.estimate for s in summary.planned.plan.chosen}
    per = {}
    for r in summary.results:
        child = children.get(r.platform)
        per[str(r.platform)] = {
            "node": r.option.node,
            "strategy": r.option.strategy,
            "estimate_seconds": round(estimates.get(r.platform, r.option.estimate), 2),
            "planned": str(summary.planned.plan.option_for(r.platform)),
            "seconds": round(r.seconds, 2),
            "digest": child.digest if child else r.digest,
            "ref": r.ref,
            "image_id": r.image_id,
            "replans": [{"from": old, "why": why} for p, old, why in summary.replans if p == r.platform],
            "estimate": {"seconds": round(r.option.estimate, 2), "basis": r.option.basis,
                         "parts": {k: round(v, 2) for k, v in r.option.parts}},
            "actual": {"seconds": round(r.seconds, 2), "parts": {k: round(v, 2) for k, v in r.parts},
                       "pushed_bytes": r.pushed_bytes},
            "steps": step_report(r),
        }
        if request is not None:
            per[str(r.platform)]["dockerfile"] = str(request.dockerfile_for(r.platform))
    doc["archfleet.platforms"] = per
    doc["archfleet.seconds"] = round(summary.seconds, 2)
    return doc


def step_report(result: PlatformResult) -> list[dict]:
    """Each Dockerfile step of ``result``: what the estimate planned (``estimate``, ``basis``)
    beside what the build reported (``seconds``, ``cached``; None when it did not report the
    step), in the planned order, then any step the build reported that was not planned."""
    timed = {(t.stage, t.index, t.keyword): t for t in result.steps}
    out = []
    for plan in result.option.steps:
        t = timed.pop((plan.stage, plan.index, plan.keyword), None)
        out.append({"stage": plan.stage, "index": plan.index, "step": plan.text, "platform": str(plan.platform),
                    "emulated": plan.emulated, "estimate": round(plan.seconds, 2), "basis": plan.basis,
                    "seconds": None if t is None else round(t.seconds, 2), "cached": None if t is None else t.cached})
    for t in timed.values():
        out.append({"stage": t.stage, "index": t.index, "step": t.text, "platform": None, "emulated": None,
                    "estimate": None, "basis": None, "seconds": round(t.seconds, 2), "cached": t.cached})
    return out


def write_metadata(path, summary: BuildSummary) -> None:
    """Write :func:`metadata`'s document to ``path`` as JSON (buildx's keys where they mean the same, plus ``archfleet.*``)."""
    text = json.dumps(metadata(summary), indent=2) + "\n"
    path.write_text(text)
