"""The learn stage: the one place archfleet keeps what it measured, for the commands after it.

The stages that measure return what they measured as frozen values; the pipeline collects them
into :class:`Lessons` and calls :func:`keep` (through :func:`archfleet.pipeline.learn`) once the
measuring is over: after the probe for the scores it measured (``ls``, ``plan``, ``doctor`` and
a build's own probe), after ``plan``'s planning for the context's file digests, and at the end
of a build for everything else.

==========================  ====================================  ==============================
measured by                 carried as                            kept in (the user's cache dir)
==========================  ====================================  ==============================
the probe's CPU benchmark   ``NodeFacts.score``, when             ``scores.json``
                            ``NodeFacts.score_measured``          (:mod:`archfleet.scores`)
the probe's ``--version``   ``NodeFacts.cli_versions`` (CLIs on   ``cli-versions.json``
of local engine CLIs        this machine, asked just now)         (:mod:`archfleet.cliversions`)
the probe's ``docker info`` ``NodeFacts.engine_infos`` (the       ``engine-infos.json``
of local engine CLIs        same, with what it depended on)       (:mod:`archfleet.engineinfos`)
a context sync              ``PlatformResult.transfer``           ``links.json``
                                                                  (:mod:`archfleet.linkrate`)
verification                ``ChildImage.scans``                  ``layers-v2/``
                                                                  (:mod:`archfleet.layercache`)
a push's read of the        ``PlatformResult.layer_prints``       ``layer-prints.json``
engine's export                                                   (:mod:`archfleet.layerprints`)
a finished build            ``PlatformResult.seconds``, ``.parts``,  ``history.sqlite``
                            ``.pushed_bytes`` and the node's      (:mod:`archfleet.history`,
                            speed                                 table ``runs``)
the build's step timings    ``PlatformResult.steps``, paired      ``history.sqlite``
                            with the ``Option.steps`` the         (table ``steps``)
                            estimate planned (:func:`steps_of`)
the context's snapshot      ``ContextFiles.digests`` of the       ``contexts/``
(its files' digests)        history views (``plan`` and builds)   (:mod:`archfleet.filedigests`)
==========================  ====================================  ==============================

Reading stays where the value is needed: the probe reads a node's cached score (to skip the
benchmark), its link rate and what a local CLI file printed for ``--version`` (to skip asking),
verification a layer's cached scan, the estimates the history. Where the files are is
:mod:`archfleet.cachedir`'s business.

Learning is an optimisation and never fails a command: every cache answers a file system or
database it cannot use by not keeping the value (history also says so once on stderr), and
:func:`keep` raises nothing of the kind.
"""

from __future__ import annotations

from typing import Mapping

import attrs

from . import cliversions, engineinfos, filedigests, layercache, layerprints, linkrate, scores
from .history import HistoryView
from .steps import join
from .model import FileDigests, LayerScan, NodeFacts, PlatformResult, Transfer
from .platforms import Platform


def _speeds(value) -> tuple[tuple[str, float], ...]:
    if isinstance(value, Mapping):
        value = value.items()
    return tuple((str(k), float(v)) for k, v in value)


@attrs.frozen
class Lessons:
    """What one command measured, for :func:`keep`. Every field may be empty.

    ``probed``: the nodes' facts (the scores they measured are kept); ``results``: the platforms
    that finished (a history row each, and the link rate of each context sync they used);
    ``speeds``: node name -> the node's relative speed when it built
    (:func:`archfleet.planner.node_speed`), kept in the rows; ``scans``: the layer scans
    verification made; ``history``: where rows go (None: history is off, no rows);
    ``histories``: (platform, view) where a platform's rows go instead, when platforms are
    built from Dockerfiles of their own (each keyed by its file).
    """

    probed: tuple[NodeFacts, ...] = attrs.field(default=(), converter=tuple)
    results: tuple[PlatformResult, ...] = attrs.field(default=(), converter=tuple)
    speeds: tuple[tuple[str, float], ...] = attrs.field(default=(), converter=_speeds)
    scans: tuple[LayerScan, ...] = attrs.field(default=(), converter=tuple)
    history: HistoryView | None = None
    histories: tuple[tuple[Platform, HistoryView | None], ...] = attrs.field(default=(), converter=tuple)

    def file_digests(self) -> tuple[FileDigests, ...]:
        """The context file digests a snapshot found and that differ from those remembered, once
        per context (the history views' files: every platform's view shares the context)."""
        views = [self.history, *(v for _, v in self.histories)]
        found = [v.files.digests for v in views if v is not None and v.files is not None]
        return tuple(dict.fromkeys(d for d in found if d is not None and d.changed))

    def transfers(self) -> tuple[Transfer, ...]:
        """Each context sync once, in the order of the results (platforms built from one sync
        carry the same Transfer)."""
        return tuple(dict.fromkeys(r.transfer for r in self.results if r.transfer is not None))


def keep(lessons: Lessons) -> None:
    """Write what ``lessons`` holds to the caches: scores the probe measured (not those it read
    from the cache; briefly those measured on a busy node, :func:`measured_busy`), the
    ``--version`` answers of local CLIs it asked, each sync's transfer folded into its link's
    rate, each new layer scan once, the layer prints the pushes read, one history row per result.
    Blocking (files, SQLite): call it in a thread. Never raises for a cache that cannot be
    written (see the module)."""
    for facts in lessons.probed:
        if facts.score_measured and facts.score is not None:
            scores.store(scores.score_key(facts.node), facts.score, busy=measured_busy(facts))
    cliversions.store(v for facts in lessons.probed for v in facts.cli_versions)
    engineinfos.store(i for facts in lessons.probed for i in facts.engine_infos)
    for transfer in lessons.transfers():
        linkrate.record(transfer.link, transfer.bytes, transfer.seconds)
    for scan in dict.fromkeys(lessons.scans):
        layercache.store(scan.digest, scan.scan)
    layerprints.store(p for result in lessons.results for p in result.layer_prints)
    for digests in lessons.file_digests():
        filedigests.store(digests)
    speeds = dict(lessons.speeds)
    views = dict(lessons.histories)
    for result in lessons.results:
        view = views.get(result.platform, lessons.history)
        if view is not None:
            view.record(result, speed=speeds.get(result.option.node), steps=steps_of(result))


def measured_busy(facts: NodeFacts) -> bool:
    """The node's load average was above its CPU count when the probe measured its score: the
    one-core benchmark got a share of a core, not the node's speed, and the planner already
    divides by that load (:func:`archfleet.planner.node_speed`). Such a score is kept for the
    commands of that moment only (:data:`archfleet.scores.BUSY_SCORE_TTL`), not for a day
    (issue 17: measured right after 60 sshd had run, load 7.3 on 2 cores, it made the next
    builds' estimates 2-4x slow: median |log(est/actual)| 0.60 against 0.26)."""
    return facts.load > max(facts.cpus, 1)


def steps_of(result: PlatformResult) -> list[tuple]:
    """The step rows a result teaches: each step the build reported (``result.steps``) paired
    with the step the estimate planned for it (``result.option.steps``, by stage and index,
    :func:`archfleet.steps.join`), as (key, chain, platform, emulated, seconds, cached). A step
    only one side knows teaches nothing (its key or its time is missing)."""
    return [(plan.key, plan.chain, str(plan.platform), plan.emulated, 0.0 if timed.cached else timed.seconds,
             timed.cached) for plan, timed in join(result.option.steps, result.steps)]
