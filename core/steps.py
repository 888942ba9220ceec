"""Dockerfile steps: which ones a build will run (for the estimate), which ones it ran and how
long each took (from the engine's own output), and what one step should take next time.

Three pieces, each pure:

- :func:`planned`: the steps of one platform's build on one node, from the Dockerfile analysis
  (:mod:`archfleet.dockerfile`): every RUN, COPY, ADD and WORKDIR of the stages the target
  needs, numbered as BuildKit numbers them (``[stage 2/4]``: FROM is 1), each with its
  ``key`` (what the step is: its text and its stage's base image), its ``chain`` (roughly
  BuildKit's cache key: a node that ran the same chain has the step cached), the platform it
  runs on and whether that is emulated on the node (:class:`archfleet.model.StepPlan`).
- :class:`StepClock`: fed every line the engine CLI prints (the build's line hook), it returns
  the steps the build reported (:class:`archfleet.model.StepTime`): BuildKit's plain progress
  (``#5 [stage 2/4] RUN make`` ... ``#5 DONE 12.3s`` or ``#5 CACHED``) gives each step's own
  duration; buildah's (``STEP 2/4: RUN make``) is timed from one STEP line to the next.
  :func:`join` pairs them with the planned steps by stage and index.
- :func:`estimate`: one step's seconds on a node from the times it took before (its key's
  observations), else its prior (:func:`archfleet.planner.step_prior`). A step's time is
  ``io + cpu``: the ``cpu`` share runs QEMU's factor slower when emulated and scales with the
  node's speed; ``io`` (waiting on a sleep, the network, the container starting) does neither.
  Which share a step has is learned when the same step ran natively and under QEMU (a ``sleep``
  takes as long under QEMU; a compile takes the QEMU factor longer), else it is the prior's.
  :func:`critical_path` sums the steps along the longest chain of stages (BuildKit runs
  independent stages at once).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import posixpath
import re
import statistics
import time
import weakref
from typing import Callable, Iterable, Mapping, Sequence

import attrs

from .context import path_in_context
from .dockerfile import Analysis, Instruction, analyse, mount_fields
from .model import BuildRequest, ContextFiles, StepPlan, StepTime
from .planner import QEMU_FACTOR, StepPrior, step_prior
from .shellword import has_wildcard, wildcard_regex
from .platforms import Platform

#: the instructions BuildKit makes a step of (and numbers, after FROM); the others set metadata
STEP_KEYWORDS = ("RUN", "COPY", "ADD", "WORKDIR")
#: what a step the node's BuildKit has cached costs (it prints ``CACHED`` at once)
CACHED_SECONDS = 0.0


def _h(*parts: object) -> str:
    return hashlib.sha256("\0".join(str(p) for p in parts).encode("utf-8", "surrogateescape")).hexdigest()[:24]


def step_text(ins: Instruction) -> str:
    """One instruction as one line, the way the step key reads it: the keyword, its flags and
    its words, whitespace collapsed (variables not expanded: a new ``--build-arg`` value is the
    same step)."""
    flags = " ".join(f"--{k}" + (f"={v}" if v is not None else "") for k, v in ins.flags)
    words = json.dumps(list(ins.words)) if ins.json else " ".join(ins.words)
    return re.sub(r"\s+", " ", " ".join(x for x in (ins.keyword, flags, words) if x)).strip()


def _stage_instructions(analysis: Analysis) -> list[list[Instruction]]:
    """Each stage's instructions after its FROM, by the lines the stages start on."""
    starts = [s.line for s in analysis.stages]
    out: list[list[Instruction]] = [[] for _ in starts]
    for ins in analysis.instructions:
        if ins.keyword == "FROM":
            continue
        i = max((k for k, line in enumerate(starts) if line <= ins.line), default=None)
        if i is not None:
            out[i].append(ins)
    return out


def _from_stage(analysis: Analysis, value: str, before: int) -> int | None:
    """The stage a ``--from`` value names (a name, the last of that name; or an index), if any."""
    name = value.lower()
    found = None
    for s in analysis.stages:
        if s.name == name:
            found = s.index
    if found is None and value.isdigit() and int(value) < len(analysis.stages):
        found = int(value)
    return found if found is not None and found != before else None


def planned(request: BuildRequest, platform: Platform, native: Sequence[Platform], emulated: Sequence[Platform],
            files: ContextFiles | str = "") -> tuple[StepPlan, ...]:
    """The steps building ``platform`` from ``request`` runs on a node whose own platforms are
    ``native`` (its own first) and that emulates ``emulated``, in the order of the stages and
    their instructions. ``files``: the context's files less the Dockerfile
    (:class:`~archfleet.model.ContextFiles`; a bare key string is taken as one key for every
    file): a COPY or ADD from the context, or a RUN that bind-mounts it, is cached only while the
    files its sources can copy are the same (:func:`files_key_for`), and, when it
    :func:`copies` the Dockerfile, while that is. Empty when the Dockerfile cannot be read or the
    node cannot run a stage (the offer would not exist). Cached: cheap to ask per option."""
    try:
        analysis = analyse(request, platform)
    except Exception:
        return ()
    bases = tuple((b.ref, b.digest_for(platform)) for b in request.bases)
    # where the Dockerfile is in the context as sent (an ignored one is not): the files say
    in_context = files.dockerfile if isinstance(files, ContextFiles) else path_in_context(analysis.path, request.context)
    return _planned(analysis, platform, tuple(native), files, tuple(request.build_args), bases, in_context)


@functools.lru_cache(maxsize=1024)
def _source_regex(src: str) -> "re.Pattern | None":
    """What a COPY source matches, as a regular expression over a context path: the source,
    component by component, then the path's end or a ``/`` (a directory copies all below it).
    None when the source is the whole context or has a variable in it (it may copy anything)."""
    if "$" in src:
        return None
    norm = posixpath.normpath("/" + src).lstrip("/")
    if norm in ("", "."):
        return None
    try:
        # Go's filepath.Match per component: * and ? never cross a /; [^...] negates, [!...] is a set
        return re.compile("/".join(wildcard_regex(p, one="[^/]", classes=True) for p in norm.split("/"))
                          + r"(?:/|\Z)", re.S)
    except re.error:  # a pattern BuildKit would refuse: taken literally
        return re.compile(re.escape(norm) + r"(?:/|\Z)", re.S)


def copies(sources: Sequence[str], path: str) -> bool:
    """Whether a COPY or ADD of ``sources`` (paths or patterns in the context, as the Dockerfile
    gives them) can copy the context's file ``path`` (``/``-separated): a source that is the
    context itself, the file, a directory above it, or a pattern matching one of those
    component by component (Go's ``filepath.Match``, as BuildKit's copy: ``src/*.go`` matches
    ``src/a.go``, not ``src/x/a.go``; ``src/*`` matches ``src/x``, so all below it). A source
    with a variable in it may be anything: True."""
    for src in sources:
        rx = _source_regex(src)
        if rx is None or rx.match(path):
            return True
    return False


def _everything(sources: Sequence[str]) -> bool:
    return any(_source_regex(s) is None for s in sources)


_MAX_LINKS = 40  # Linux's MAXSYMLINKS: BuildKit's copy then fails (ELOOP), and so nothing is followed further


def through_links(links: Mapping[str, str], src: str) -> str | None:
    """``src`` with the symbolic links among its leading literal components replaced by their
    targets, as BuildKit's COPY finds its sources (``FollowSymlinks``; the context is the root:
    an absolute target, or a ``..`` above the context, stays inside it, as
    ``fs.RootPath`` resolves); None when no such component is a link. ``links``: the context's
    links, path -> target. Resolution stops at the first component with a wildcard (what a
    pattern matches is not resolved here). ``"lib"`` -> ``"."`` gives ``""``: the whole context."""
    if "$" in src:
        return None
    norm = posixpath.normpath("/" + src).lstrip("/")
    parts = norm.split("/") if norm not in ("", ".") else []
    changed = False
    for _ in range(_MAX_LINKS):  # one link resolved per pass, then the path is read again from its start
        for i, part in enumerate(parts):
            if has_wildcard(part):
                return "/".join(parts) if changed else None
            target = links.get("/".join(parts[:i + 1]))
            if target is not None:
                base = "/" if target.startswith("/") else "/" + "/".join(parts[:i])
                new = posixpath.normpath(posixpath.join(base, target)).lstrip("/")
                parts = (new.split("/") if new not in ("", ".") else []) + parts[i + 1:]
                changed = True
                break
        else:
            return "/".join(parts) if changed else None
    return "/".join(parts)  # a loop of links: as far as it got


@functools.lru_cache(maxsize=64)
def _links_of(files: ContextFiles) -> dict[str, str]:
    return {path: content[3:] for path, content, _ in files.entries if content.startswith("-> ")}


def followed(files: ContextFiles, sources: Sequence[str]) -> tuple[str, ...]:
    """``sources`` and, for each that reaches through a symbolic link of the context, the path
    BuildKit copies from (:func:`through_links`): a COPY of ``link/file`` with ``link -> dir``
    copies ``dir/file``, so that file's contents key it; the link's own entry keys it too."""
    links = _links_of(files)
    if not links:
        return tuple(sources)
    out = list(sources)
    for src in sources:
        resolved = through_links(links, src)
        if resolved is not None and resolved not in out:
            out.append(resolved)
    return tuple(out)


@functools.lru_cache(maxsize=512)
def files_key_for(files: ContextFiles, sources: tuple[str, ...]) -> str:
    """The key (32 hex digits) of the files of ``files`` that a COPY or ADD of ``sources``
    :func:`copies`: changes only when one of those is added, removed, changed or given another
    mode (a directory: added or removed), not when a file is only touched.
    ``files.key`` itself when a source is the whole context or has a variable in it."""
    sources = followed(files, sources)
    if _everything(sources):
        return files.key
    h = hashlib.sha256(b"files\n")
    for path, content, mode in files.entries:
        if copies(sources, path):
            h.update(os.fsencode(path) + f"\0{content}\0{mode:o}\n".encode())
    return h.hexdigest()[:32]


def _context_key(files: ContextFiles | str, sources: Sequence[str]) -> str:
    if isinstance(files, ContextFiles):
        return files_key_for(files, tuple(sources))
    return files


def _bind_sources(value: str) -> tuple[bool, str | None, str]:
    """A ``RUN --mount=...`` value's (is a bind mount, its ``from``, its ``source``): BuildKit's
    default type is bind and its default source the root of what it mounts."""
    fields = {k: v or "" for k, v in mount_fields(value)}
    return (fields.get("type", "bind").lower() == "bind", fields.get("from") or None,
            fields.get("source") or fields.get("src") or "/")


def context_sources(analysis: Analysis) -> tuple[str, ...]:
    """Every path or pattern the Dockerfile reads from the context, in every stage (whatever
    the target needs: the conservative answer): each COPY and ADD source without ``--from``, and
    each ``RUN --mount`` bind of the context (its ``source``)."""
    out: list[str] = []
    for ins in analysis.instructions:
        if ins.keyword in ("COPY", "ADD") and not ins.flag("from"):
            out += ins.words[:-1]
        elif ins.keyword == "RUN":
            for name, value in ins.flags:
                if name == "mount" and value:
                    bind, src, source = _bind_sources(value)
                    if bind and not src:
                        out.append(source)
    return tuple(out)


def read_by(files: ContextFiles, analysis: Analysis, paths: Iterable[str]) -> tuple[str, ...]:
    """The context files of ``paths`` the build of ``analysis`` can read: a source of
    :func:`context_sources` :func:`copies` it, through the context's links as BuildKit
    follows them (:func:`followed`; the sources resolved once for all the paths)."""
    sources = followed(files, context_sources(analysis))
    return tuple(p for p in paths if copies(sources, p))


@functools.lru_cache(maxsize=1024)
def _planned(analysis: Analysis, platform: Platform, native: tuple, files: ContextFiles | str, build_args: tuple,
             bases: tuple, dockerfile_in_context: str = "") -> tuple[StepPlan, ...]:
    if not native:
        return ()
    build = native[0]
    try:
        reachable, where = analysis.concrete(build, platform)
    except Exception:
        return ()
    args = dict(build_args)
    resolved = dict(bases)
    per_stage = _stage_instructions(analysis)
    single = len(analysis.stages) == 1
    root_base: dict[int, str] = {}
    last_chain: dict[int, str] = {}

    def lineage(k: int | None) -> tuple[int, ...]:
        """``k`` and the stages it is built FROM: waiting for ``k`` waits for them too."""
        out_: list[int] = []
        while k is not None and k not in out_:
            out_.append(k)
            k = analysis.stages[k].parent
        return tuple(out_)

    def context_part(sources: Sequence[str]) -> str:
        """What a step that reads ``sources`` from the context depends on: the files they can
        copy, less the Dockerfile (editing a file it does not copy, or the Dockerfile, leaves it
        cached), plus the Dockerfile when they can copy it."""
        part = "context " + _context_key(files, sources)
        if dockerfile_in_context and copies(followed(files, sources) if isinstance(files, ContextFiles) else sources,
                                            dockerfile_in_context):
            part += f" dockerfile {analysis.digest}"
        return part

    out: list[StepPlan] = []
    for i in sorted(reachable):
        stage = analysis.stages[i]
        runs_on = where[i]
        if isinstance(runs_on, str):
            return ()  # a stage whose --platform names nothing here: no offer either
        if stage.parent is not None:
            root_base[i] = root_base.get(stage.parent, stage.base)
            chain = last_chain.get(stage.parent, _h("stage", stage.base))
        else:
            root_base[i] = stage.base
            chain = _h("base", stage.base, resolved.get(stage.base, ""), runs_on)
        display = "" if single else (stage.name or f"stage-{i}")
        waits = lineage(stage.parent)  # the first step waits for the stage it is FROM
        index = 1
        declared: dict[str, str | None] = {}
        is_emulated = runs_on not in native
        for ins in per_stage[i]:
            if ins.keyword == "ARG":
                for word in ins.words:
                    name, eq, default = word.partition("=")
                    declared[name] = args.get(name, default if eq else None)
                continue
            if ins.keyword not in STEP_KEYWORDS:
                continue
            index += 1
            text = step_text(ins)
            key = _h("step", root_base[i], text)
            extra = ""
            sources: list[int] = []
            if ins.keyword in ("COPY", "ADD"):
                src = ins.flag("from")
                if src:
                    k = _from_stage(analysis, src, i)
                    extra = last_chain.get(k, "") if k is not None else f"image {src}"
                    sources += lineage(k)
                else:
                    extra = context_part(ins.words[:-1])
            elif ins.keyword == "RUN":
                for name, value in ins.flags:
                    if name != "mount" or not value:
                        continue
                    bind, src, source = _bind_sources(value)
                    if src:
                        k = _from_stage(analysis, src, i)
                        extra += " " + (last_chain.get(k, "") if k is not None else f"image {src}")
                        sources += lineage(k)
                    elif bind:  # the context, mounted: the RUN sees the files under its source
                        extra += " " + context_part((source,))
            # build args reach a RUN's environment only: a COPY after a changed ARG stays cached
            scope = sorted(declared.items(), key=lambda kv: kv[0]) if ins.keyword == "RUN" else ()
            chain = _h("chain", chain, text, scope, extra)
            after = tuple(sorted(set(waits) | set(sources)))
            waits = ()
            out.append(StepPlan(display, index, ins.keyword, text, key, chain, runs_on,
                                emulated=is_emulated and ins.keyword == "RUN", stage_index=i, after=after))
        last_chain[i] = chain
    return tuple(out)


def prior_of(step: StepPlan, request: BuildRequest, context_bytes: int = 0) -> StepPrior:
    """The prior (:func:`archfleet.planner.step_prior`) of a planned step of ``request`` (the
    platform's view of it, :meth:`~archfleet.model.BuildRequest.for_platform`): its instruction
    read back from the Dockerfile by stage and text; a COPY or ADD from the context writes
    ``context_bytes``."""
    ins = _instruction(request, step)
    if ins is None:
        return step_prior(step.keyword, step.text.split()[1:])
    from_context = ins.keyword in ("COPY", "ADD") and not ins.flag("from")
    return step_prior(ins.keyword, ins.words, json=ins.json, context_bytes=context_bytes, from_context=from_context)


# id(request) -> (a weak reference to it, its stages' instructions): a plan reads the same
# request's steps back for every option (thousands in a large fleet); keyed by identity, as
# hashing a request (or analyse's cache key) costs more than the look-up it would save
_STAGES: dict[int, tuple] = {}


def _stages_of(request: BuildRequest):
    got = _STAGES.get(id(request))
    if got is not None and got[0]() is request:
        return got[1]
    stages = _stage_instructions(analyse(request))
    if len(_STAGES) > 64:
        _STAGES.clear()
    _STAGES[id(request)] = (weakref.ref(request), stages)
    return stages


def _instruction(request: BuildRequest, step: StepPlan) -> Instruction | None:
    try:
        stages = _stages_of(request)
    except Exception:
        return None
    for ins in stages[step.stage_index] if step.stage_index < len(stages) else ():
        if ins.keyword == step.keyword and step_text(ins) == step.text:
            return ins
    return None


# --- what the build reported ------------------------------------------------------------------------

_VERTEX = re.compile(r"^#(\d+) \[([^\]]*)\] (.*)$")
CONTEXT_LOAD = "load build context"  # BuildKit's vertex receiving the context (dockerfile2llb)
_DONE = re.compile(r"^#(\d+) DONE (\d+(?:\.\d+)?)s\s*$")
_CACHED = re.compile(r"^#(\d+) CACHED\s*$")
# A step's output that does not end in a newline has its own DONE glued to it: BuildKit's plain
# printer ends a partial log with a newline only when it moves to another vertex
# (progressui's printVtx, logsPartial), so "#7 0.151 abc#7 DONE 0.2s" is one line.
_LOG_THEN_DONE = re.compile(r"^#(\d+) .*#(\d+) DONE (\d+(?:\.\d+)?)s\s*$", re.S)
_POSITION = re.compile(r"^(\d+)/(\d+)$")
_BUILDAH_STEP = re.compile(r"^(?:\[(\d+)/(\d+)\] )?STEP (\d+)(?:/(\d+))?: (\S+)(.*)$")
_BUILDAH_END = re.compile(r"^(COMMIT\b|--> |Successfully tagged |[0-9a-f]{64}$)")
_BUILDAH_CACHE = re.compile(r"^--> Using cache ")


def parse_vertex(inner: str) -> tuple[str, int] | None:
    """``stage k/n`` (or ``k/n``, or ``linux/arm64 stage k/n`` when BuildKit prefixes the
    platform) -> (stage, k); None for BuildKit's own vertices (``internal``, ``exporting``)."""
    words = inner.split()
    if not words:
        return None
    m = _POSITION.match(words[-1])
    if not m:
        return None
    rest = words[:-1]
    if rest and "/" in rest[0]:
        rest = rest[1:]  # a platform prefix (a stage name holds no "/")
    return (" ".join(rest), int(m.group(1)))


class StepClock:
    """Reads an engine CLI's output, line by line as it arrives (:meth:`feed`), and keeps the
    steps it reports (:meth:`steps`). BuildKit gives each step's duration; buildah's steps are
    timed from the arrival of one ``STEP`` line to the next (``now``: a clock in seconds, the
    monotonic one by default). Never raises: a line it does not understand is ignored."""

    def __init__(self, now: Callable[[], float] = time.monotonic):
        self._now = now
        self._names: dict[int, tuple[str, int, str, str]] = {}  # vertex -> (stage, index, keyword, text)
        self._done: dict[int, tuple[float, bool]] = {}
        self._order: list[int] = []
        self._buildah: list[list] = []  # [stage, index, keyword, text, started, ended, cached]
        self._loads: set[int] = set()  # BuildKit's "[internal] load build context" vertices

    def feed(self, line: str) -> None:
        """One output line (without its newline)."""
        try:
            self._feed(line.rstrip("\r\n"))
        except Exception:  # progress parsing must never fail a build
            pass

    def _feed(self, line: str) -> None:
        if line.startswith("#"):
            m = _VERTEX.match(line)
            if m:
                vertex = int(m.group(1))
                where = parse_vertex(m.group(2))
                if where is not None and vertex not in self._names:
                    text = m.group(3).strip()
                    keyword = text.split(" ", 1)[0].upper()
                    self._names[vertex] = (where[0], where[1], keyword, text)
                    self._order.append(vertex)
                elif where is None and m.group(2).strip() == "internal" and m.group(3).strip() == CONTEXT_LOAD:
                    self._loads.add(vertex)
                return
            m = _DONE.match(line)
            if m:
                self._done[int(m.group(1))] = (float(m.group(2)), False)
                return
            m = _CACHED.match(line)
            if m:
                self._done[int(m.group(1))] = (0.0, True)
                return
            m = _LOG_THEN_DONE.match(line)
            if m and m.group(1) == m.group(2):  # only the vertex's own DONE ends its own log
                self._done[int(m.group(1))] = (float(m.group(3)), False)
            return
        now = self._now()
        m = _BUILDAH_STEP.match(line)
        if m:
            self._end_buildah(now)
            stage = f"#{int(m.group(1)) - 1}" if m.group(1) else ""
            keyword = m.group(5).upper()
            self._buildah.append([stage, int(m.group(3)), keyword, (keyword + m.group(6)).strip(), now, None, False])
            return
        if self._buildah and self._buildah[-1][5] is None:
            if _BUILDAH_CACHE.match(line):
                self._buildah[-1][6] = True
            if _BUILDAH_END.match(line):
                self._end_buildah(now)

    def _end_buildah(self, now: float) -> None:
        if self._buildah and self._buildah[-1][5] is None:
            self._buildah[-1][5] = now

    def steps(self) -> tuple[StepTime, ...]:
        """The steps seen so far that finished (DONE or CACHED; buildah: ended), in the order
        they first appeared; FROM is left out (pulling the base is the fixed part)."""
        out = []
        for vertex in self._order:
            stage, index, keyword, text = self._names[vertex]
            if vertex not in self._done or keyword == "FROM":
                continue
            seconds, cached = self._done[vertex]
            out.append(StepTime(stage, index, keyword, text, seconds, cached))
        for stage, index, keyword, text, started, ended, cached in self._buildah:
            if keyword == "FROM" or ended is None:
                continue
            out.append(StepTime(stage, index, keyword, text, 0.0 if cached else round(max(ended - started, 0.0), 3),
                                cached))
        return tuple(out)

    def context_load(self) -> float:
        """Seconds BuildKit spent receiving the build context (its ``[internal] load build
        context`` vertices): the context's transfer into the engine, which sends only the files
        it does not hold by stat (fsutil's diff); 0 when there were none (buildah)."""
        return round(sum(self._done.get(v, (0.0, False))[0] for v in self._loads), 3)

    def close(self, now: float | None = None) -> None:
        """The build ended: the last buildah step ends now."""
        self._end_buildah(self._now() if now is None else now)


def join(plans: Sequence[StepPlan], timed: Sequence[StepTime]) -> list[tuple[StepPlan, StepTime]]:
    """Pairs of (planned step, reported step): the same stage and index and keyword (BuildKit
    names stages as :func:`planned` does; buildah numbers them ``#N``, matched by the stage's
    index in the file). When every planned step is in one stage, the stage's name is not
    compared: BuildKit prints a one-stage file's steps as ``[2/4]`` or, once a RUN has a
    ``--mount``, as ``[stage-0 2/4]``. A reported step with no planned twin, or the other way
    round, is left out."""
    by_place = {(p.stage, p.index, p.keyword): p for p in plans}
    by_number = {(f"#{p.stage_index}", p.index, p.keyword): p for p in plans}
    one_stage = {(p.index, p.keyword): p for p in plans} if len({p.stage_index for p in plans}) == 1 else {}
    out = []
    for t in timed:
        p = (by_place.get((t.stage, t.index, t.keyword)) or by_number.get((t.stage, t.index, t.keyword))
             or one_stage.get((t.index, t.keyword)))
        if p is not None:
            out.append((p, t))
    return out


# --- what a step should take ------------------------------------------------------------------------

@attrs.frozen
class Observation:
    """One time a step ran (not cached): ``seconds`` on ``node`` of ``speed`` (relative, see
    :func:`archfleet.planner.node_speed`), for ``platform``, ``emulated`` or not."""

    seconds: float
    speed: float
    platform: str
    emulated: bool
    node: str = ""


def cpu_share(obs: Sequence[Observation], prior: StepPrior, qemu: float) -> tuple[float, bool]:
    """The share of the step's native time that is CPU work, and whether it was learned: from
    its times under QEMU against natively (``r`` = emulated / native; ``r = 1 - f + f * qemu``),
    else the prior's."""
    native = [o.seconds * o.speed for o in obs if not o.emulated]
    emul = [o.seconds * o.speed for o in obs if o.emulated]
    if native and emul and qemu > 1:
        n, e = statistics.median(native), statistics.median(emul)
        if n > 0.05:
            return min(max((e / n - 1) / (qemu - 1), 0.0), 1.0), True
    return prior.cpu_share, False


def estimate(step: StepPlan, prior: StepPrior, obs: Sequence[Observation], speed: float,
             qemu: float = QEMU_FACTOR, node: str = "") -> tuple[float, str]:
    """(seconds, basis) of ``step`` on ``node`` of ``speed``, where it runs emulated or not as
    ``step.emulated`` says and emulated CPU work costs ``qemu`` times more:

    0. the times it took on this very node, for the same platform and emulation: their median
       as they were (a node's speed figure moves with the load and a short benchmark; the step's
       own time there is the better measure);
    1. the times it took before for the same platform and the same emulation, else any platform
       with the same emulation: their median, each moved to this node's speed by its CPU share;
    2. else the times it took the other way (natively, wanted emulated, or the reverse): moved
       by the QEMU factor on its CPU share (learned share, else the prior's);
    3. else the prior: ``io + cpu / speed`` (``cpu * qemu`` emulated).
    """
    speed = speed if speed > 0 else 1.0
    share, learned = cpu_share(obs, prior, qemu)

    def moved(o: Observation) -> float:
        return o.seconds * ((1 - share) + share * (o.speed / speed if o.speed > 0 else 1.0))

    same = [o for o in obs if o.emulated == step.emulated and o.platform == str(step.platform)]
    here = [o.seconds for o in same if node and o.node == node]
    if here:
        return statistics.median(here), f"learned on this node from {len(here)} run{'s' if len(here) > 1 else ''}"
    mode = same or [o for o in obs if o.emulated == step.emulated]
    if mode:
        seconds = statistics.median(moved(o) for o in mode)
        where = "" if same else " (other platforms)"
        return seconds, f"learned{where} from {len(mode)} run{'s' if len(mode) > 1 else ''}"
    if obs:
        base = statistics.median(moved(o) for o in obs)
        factor = (1 - share) + share * qemu
        seconds = base * factor if step.emulated else base / factor
        how = "learned" if learned else "prior"
        return seconds, (f"learned {'natively' if step.emulated else 'under qemu'}, moved by qemu x{qemu:.1f} "
                         f"on its {how} CPU share {share:.0%}")
    cpu = prior.cpu * (qemu if step.emulated else 1.0) / speed
    return prior.io + cpu, f"prior ({prior.kind})"


def critical_path(steps: Sequence[StepPlan], seconds: Mapping[tuple[int, int], float]) -> float:
    """Seconds until the last step ends when BuildKit runs the stages at once and a step waits
    only for what it needs: each stage's steps one after the other, a step starting once the
    stages in its ``after`` (the stage it is FROM, the stages it copies or mounts from) have
    ended. ``seconds[(stage_index, index)]`` is each step's time (0 if absent)."""
    end: dict[int, float] = {}
    clock: dict[int, float] = {}
    for s in sorted(steps, key=lambda s: (s.stage_index, s.index)):
        start = max([clock.get(s.stage_index, 0.0)] + [end.get(d, 0.0) for d in s.after if d != s.stage_index])
        clock[s.stage_index] = start + max(seconds.get((s.stage_index, s.index), 0.0), 0.0)
        end[s.stage_index] = clock[s.stage_index]
    return max(end.values(), default=0.0)


def measured_work(plans: Sequence[StepPlan], timed: Sequence[StepTime]) -> float:
    """The ``work`` part a build measured: its reported steps' seconds along the critical path of
    the planned steps (:func:`critical_path`, so it compares with the estimate), or their sum
    when nothing was planned (an option no estimate planned steps for)."""
    if plans:
        return critical_path(plans, {(p.stage_index, p.index): t.seconds for p, t in join(plans, timed)})
    return sum(t.seconds for t in timed)


def observations(rows: Iterable[tuple]) -> list[Observation]:
    """History rows (seconds, speed, platform, emulated[, node]) as observations (speed 1 when unknown)."""
    return [Observation(float(r[0]), float(r[1]) if r[1] and r[1] > 0 else 1.0, str(r[2]), bool(r[3]),
                        str(r[4]) if len(r) > 4 and r[4] is not None else "") for r in rows]
