"""Stub nodes for executor and engine tests: a transport that plays a scripted engine CLI and a
strategy plugin that builds through ``engine.build`` on it, like the built-in strategies do."""

from __future__ import annotations

import asyncio
from pathlib import Path


from archfleet import engine
from archfleet.api import hookimpl
from archfleet.engine import EngineCLI
from archfleet.model import BuildRequest, NodeFacts, NodeSpec, Option, PlatformResult
from archfleet.planner import Plan, Scheduled
from archfleet.platforms import parse
from archfleet.transport import CommandNode, Completed

AMD, ARM, S390 = parse("linux/amd64"), parse("linux/arm64"), parse("linux/s390x")
IMAGE = "writing image sha256:" + "ab" * 32
CTX = Path(__file__).resolve().parent.parent.parent / "examples" / "arch-test"


def request(*platforms, **kw) -> BuildRequest:
    return BuildRequest(CTX, CTX / "Dockerfile", platforms or (AMD,), **kw)


def ok(lines=()):
    """An engine CLI run that prints ``lines`` and succeeds."""
    async def play(argv, on_line):
        for line in [*lines, IMAGE]:
            on_line(line)
        return Completed(tuple(argv), 0, tuple([*lines, IMAGE]))
    return play


def fails(*lines, rc=1, delay=0.0):
    """An engine CLI run that prints ``lines`` (build output and its own error line) and exits ``rc``."""
    async def play(argv, on_line):
        await asyncio.sleep(delay)
        for line in lines:
            on_line(line)
        return Completed(tuple(argv), rc, tuple(lines))
    return play


def slow(seconds=30.0):
    """An engine CLI run that takes ``seconds`` (long enough to be cancelled)."""
    async def play(argv, on_line):
        on_line("#5 [2/2] RUN sleep 30")
        await asyncio.sleep(seconds)
        on_line(IMAGE)
        return Completed(tuple(argv), 0, (IMAGE,))
    return play


class FakeDocker:
    def __init__(self, alive: bool):
        self.alive = alive

    def ping(self):
        if not self.alive:
            raise ConnectionError("engine gone")
        return True


class StubTransport(CommandNode):
    """``builds``: what each engine CLI run does, in order (the last one repeats). Records runs,
    cancellations and the leases taken and dropped (their fixed ``sh -c`` scripts)."""

    def __init__(self, node: str, *builds, alive: bool = True):
        self.node = node
        self.builds = list(builds)
        self.alive = alive
        self.runs: list[tuple[str, ...]] = []
        self.cancelled: list[tuple[str, ...]] = []
        self.leases_taken = 0
        self.leases_dropped = 0

    async def run(self, argv, *, env=None, stdin=None, on_line=None, timeout=None) -> Completed:
        from archfleet import leases

        if argv[0] == "sh":  # a lease script
            if argv[2] == leases._CLAIM:
                self.leases_taken += 1
                if on_line is not None:
                    on_line("claim=taken")
            elif argv[2] == leases._DROP:
                self.leases_dropped += 1
            return Completed(tuple(argv), 0)
        self.runs.append(tuple(argv))
        play = self.builds.pop(0) if len(self.builds) > 1 else self.builds[0]
        try:
            return await play(argv, on_line or (lambda line: None))
        except asyncio.CancelledError:
            self.cancelled.append(tuple(argv))
            raise

    def docker_client(self):
        return FakeDocker(self.alive)

    async def close(self) -> None:
        pass


class StubStrategy:
    """Strategy "stub": builds with ``engine.build`` on the node's transport, waits at the push
    gate, and "pushes" (returns a result with a ref)."""

    def __init__(self, transports: dict[str, StubTransport]):
        self.transports = transports

    @hookimpl
    def archfleet_connect(self, node, facts):
        async def connect():
            return self.transports[node.name]
        return connect()

    @hookimpl
    def archfleet_run(self, option, request, job):
        if option.strategy != "stub":
            return None
        return self._run(option, request, job)

    async def _run(self, option, request, job):
        job.status("building")
        image = await engine.build(job.transport, EngineCLI(("docker",), "buildkit"), platform=option.platform,
                                   request=request, tag="reg/app:1", on_line=job.log)
        await job.ready_to_push()
        job.status("pushing")
        return PlatformResult(option.platform, option, 1.0, image_id=image, ref=f"reg/app@sha256:{'cd' * 32}",
                              digest=f"sha256:{'cd' * 32}", repository="reg/app")


def manager(transports: dict[str, StubTransport]):
    """A plugin manager holding only the stub strategy (no built-ins)."""
    from archfleet.manager import make_hooks

    hooks = make_hooks({}, load_entrypoints=False, builtins=())
    hooks.register(StubStrategy(transports), name="stub")
    return hooks


def executor(transports: dict[str, StubTransport], req: BuildRequest, node_facts: dict, reporter,
             options=()):
    """An Executor wired the way the pipeline wires it, with the stub strategy on ``transports``
    (see :func:`wired`)."""
    return wired(manager(transports), req, node_facts, reporter, options)


def wired(hooks, req: BuildRequest, node_facts: dict, reporter, options=()):
    """An Executor wired the way the pipeline wires it: ``connect`` and ``run`` through ``hooks``
    (a plugin manager), fallback asked of the planner over ``options``."""
    from archfleet.executor import Executor
    from archfleet.planner import next_best
    from archfleet.session import Session

    session = Session()

    def replan(platform, tried, down, wait):
        return next_best([o for o in options if o.platform == platform], tried, down, wait)

    async def connect(node):
        return await hooks.connect(node_facts[node].node, node_facts[node], session)

    return Executor(req, node_facts, reporter, connect=connect,
                    run_option=lambda option, job: hooks.run(option, req, job), replan=replan)


def facts(*names: str, max_builds: int = 4, busy: dict[str, tuple[float, ...]] | None = None) -> dict[str, NodeFacts]:
    """Reachable stub nodes running amd64, arm64 and s390x; ``busy``: per node, the seconds until
    each slot other archfleet runs hold there frees (as the probe reports them)."""
    busy = busy or {}
    return {n: NodeFacts(NodeSpec(n, transport="stub", settings={"host": n}, max_builds=max_builds), True,
                         native=[AMD, ARM, S390], builder="buildkit", engine_cli=["docker"], busy=busy.get(n, ()))
            for n in names}


def option(platform, node: str, estimate: float = 10.0) -> Option:
    return Option(platform, "stub", node, estimate)


def plan(*chosen: Option) -> Plan:
    return Plan(tuple(Scheduled(o, 0.0, o.estimate) for o in chosen), ())


class Recorder:
    """A reporter that records every call."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, *args))

    def of(self, name: str) -> list[tuple]:
        return [c[1:] for c in self.calls if c[0] == name]


# -- a strategy whose every step the test scripts ---------------------------------------------


class Scripted:
    """Strategies ``scripted`` and ``other``: what an option does is the play the test gives for
    its (platform, node) or (platform, node, strategy); plays are async functions
    ``play(option, job, log)`` returning a PlatformResult (see :func:`builds`, :func:`raises`).
    ``log`` records what happened, in order, as tuples. The transports are :class:`StubTransport`
    (only the lease scripts run on them)."""

    names = ("scripted", "other")

    def __init__(self, plays: dict, connects=None):
        self.plays = plays
        self.connects = connects  # the nodes it connects to (None: all)
        self.log: list[tuple] = []
        self.transports: dict[str, StubTransport] = {}

    @hookimpl
    def archfleet_connect(self, node, facts):
        if self.connects is not None and node.name not in self.connects:
            return None

        async def connect():
            return self.transports.setdefault(node.name, StubTransport(node.name))
        return connect()

    @hookimpl
    def archfleet_run(self, option, request, job):
        if option.strategy not in self.names:
            return None
        play = self.plays.get((option.platform, option.node, option.strategy)) \
            or self.plays.get((option.platform, option.node))
        if play is None:
            raise AssertionError(f"the test gave no play for {option.platform} on {option}")
        return play(option, job, self.log)


def result(option: Option) -> PlatformResult:
    digest = f"sha256:{'cd' * 32}"
    return PlatformResult(option.platform, option, 1.0, image_id="sha256:" + "ab" * 32, ref=f"reg/app@{digest}",
                          digest=digest, repository="reg/app")


def builds(*, until: asyncio.Event | None = None, at_gate: asyncio.Event | None = None, push: bool = True):
    """A play that builds (until the test sets ``until``, if given), then, with ``push``, waits
    at the push gate (setting ``at_gate`` when it gets there) and pushes. Logs ("start", p, node),
    ("built", p), ("pushed", p), or ("gate raised", p, exception type name) when the gate raised
    (then it re-raises)."""
    async def play(option, job, log):
        p = option.platform
        log.append(("start", p, option.node))
        if until is not None:
            await until.wait()
        log.append(("built", p))
        if push:
            if at_gate is not None:
                at_gate.set()
            try:
                await job.ready_to_push()
            except BaseException as exc:
                log.append(("gate raised", p, type(exc).__name__))
                raise
            log.append(("pushed", p))
        return result(option)
    return play


def raises(exc: BaseException, *, after: asyncio.Event | None = None):
    """A play that starts, waits for ``after`` (if given) and raises ``exc``."""
    async def play(option, job, log):
        log.append(("start", option.platform, option.node))
        if after is not None:
            await after.wait()
        log.append(("raised", option.platform, type(exc).__name__))
        raise exc
    return play


def scripted(plays: dict, connects=None):
    """(a plugin manager holding only the scripted strategies, the strategy object)."""
    from archfleet.manager import make_hooks

    hooks = make_hooks({}, load_entrypoints=False, builtins=())
    strategy = Scripted(plays, connects)
    hooks.register(strategy, name="scripted")
    return hooks, strategy


def scripted_option(platform, node: str, estimate: float = 10.0, strategy: str = "scripted") -> Option:
    return Option(platform, strategy, node, estimate)


class ConnectsStubs:
    """A plugin base whose ``archfleet_connect`` answers a fresh :class:`StubTransport` for
    every node: a test's strategy plugin inherits it when only its ``archfleet_run`` matters."""

    @hookimpl
    def archfleet_connect(self, node, facts):
        async def connect():
            return StubTransport(node.name)
        return connect()
