"""The built-in ``estimates`` plugin: every option's estimate in parts, each learned on its own.

An option's seconds are the sum of four parts (``archfleet.model.PARTS``), each from history
when it knows, else from its prior (``archfleet.planner``):

- ``fixed``: what any build costs on that node (the engine starting, the base resolved, the
  image written and read back): the median of the last builds of this project on that node,
  else of any project on that node, else the prior (``fixed_prior``: this machine or a remote
  node, its CPU share scaled by the node's speed). Never another node's: one slow board's
  builds must not make the fast host look slow;
- ``transfer``: sending the context to a node that has not built it, and its engine receiving
  it (BuildKit's ``load build context``, measured from its progress output): the bytes / the
  link rate measured on earlier syncs to that node (or an assumed 50 MB/s), for a remote
  node, plus the bytes / ``LOAD_RATE``; only the files changed since archfleet last saw the
  context when the node built this project before (:func:`transfer_part`);
- ``work``: the Dockerfile's steps (``archfleet.steps``), each estimated from the times that
  very step took before (natively or under QEMU, on any node, moved to this node's speed by
  its CPU share), else its prior by what it runs; a step this node's BuildKit has cached (it ran
  the same chain there this week, and no ``--no-cache``) costs nothing. Summed along the
  longest chain of stages;
- ``push`` (only with ``--push``): compressing and uploading the new layers: the median of this
  project's last pushes for this platform (else any platform), else the bytes it pushed (or the
  context's, when the target copies it in) at the rate learned for that node's pushes.

An option that starts warm (another node built the platform's last child, which its build reads
as an inline cache: ``archfleet.buildcache.warm_ref``) counts the final stage's steps that node
recorded as cached ("warm"); a step that child does not hold (another cache chain: a changed
build arg or file) runs again in full; only when history did not record the steps of the build
that pushed the child do the final stage's steps cost ``WARM_FACTOR`` of their cold estimate.

The answer is an ``Estimate``: seconds, one line of where they come from, the parts and the
planned steps (the learn stage pairs those with the steps the build reports).
"""

from __future__ import annotations

import statistics

import attrs

from archfleet.api import (LINK_RATE, LOAD_RATE, PUSH_BASE, PUSH_RATE, WARM_FACTOR, Estimate, fixed_prior, hookimpl,
                           node_speed, push_prior, steps, warm_ref)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fixed_part(option, facts, history) -> tuple[float, str]:
    """(seconds, basis) of the ``fixed`` part: learned as the module says, else the prior."""
    if history is not None:
        # never another node's: one build on a slow board must not make the fast host look slow
        for where, basis in (({"project_key": history.project_key, "node": option.node}, f"this project on {option.node}"),
                             ({"node": option.node}, f"builds on {option.node}")):
            rows = history.part_rows(limit=5, **where)
            got = _median(r[2] for r in rows)
            if got is not None:
                return got, f"learned ({basis}, {len(rows)} run{'s' if len(rows) > 1 else ''})"
    where = "this machine" if facts is None or facts.node.transport == "local" else "a remote node"
    return fixed_prior(facts), f"prior ({where})"


def _push_rate(rows) -> tuple[float, float, bool]:
    """(base seconds, bytes/s, learned) of a node's pushes: the base from the small ones, the
    rate from the big ones, each the prior without such pushes."""
    small = [r[5] for r in rows if r[5] is not None and (r[6] or 0) < (1 << 20)]
    base = _median(small) if small else PUSH_BASE
    rates = [r[6] / (r[5] - base) for r in rows if r[5] is not None and (r[6] or 0) >= (4 << 20) and r[5] > base + 0.05]
    rate = _median(rates) if rates else PUSH_RATE
    return base, rate, bool(small or rates)


def push_part(option, request, plans, history) -> tuple[float, str]:
    """(seconds, basis) of the ``push`` part (0 without ``--push``)."""
    if not request.push:
        return 0.0, "no push"
    project_rows = ()
    if history is not None:
        project_rows = history.part_rows(project_key=history.project_key, platform=str(option.platform), limit=3,
                                         pushed=True)
        got = _median(r[5] for r in project_rows)
        if got is not None:
            return got, "learned (this project's pushes of this platform)"
        project_rows = history.part_rows(project_key=history.project_key, limit=5, pushed=True)
    nbytes = _median(r[6] for r in project_rows)
    said = "as this project's last pushes"
    if nbytes is None:
        copies = any(p.keyword in ("COPY", "ADD") and " --from" not in p.text and p.stage_index == plans[-1].stage_index
                     for p in plans) if plans else False
        nbytes = history.context_bytes if copies and history is not None else 0
        said = "the context copied in" if copies else "nothing big"
    base, rate, learned = _push_rate(history.part_rows(node=option.node, limit=20, pushed=True) if history is not None else ())
    seconds = base + nbytes / rate if learned else push_prior(int(nbytes))
    return seconds, (f"{nbytes / 1e6:.1f} MB ({said}) at {rate / 1e6:.0f} MB/s "
                     + (f"learned on {option.node}" if learned else "(prior)"))


def transfer_part(option, facts, history) -> tuple[float, str]:
    """(seconds, basis) of the ``transfer`` part: the context synced to a remote node (its bytes
    / the link rate), then received by the node's engine (BuildKit's ``load build context``:
    its bytes / ``LOAD_RATE``). Nothing when the node built these very files before (it and its
    engine hold them); when it built this project before, only the bytes of the files that are
    new or changed since archfleet last saw the context (``FileDigests.unseen_bytes``: both the
    sync and BuildKit send a file by what changed); else the whole context."""
    if facts is None or history is None or history.synced_before(option.node):
        return 0.0, ""
    digests = history.files.digests if history.files is not None else None
    built_here = bool(history.part_rows(node=option.node, project_key=history.project_key, limit=1))
    nbytes, which = ((digests.unseen_bytes, "changed") if built_here and digests is not None
                     else (history.context_bytes, "context"))
    seconds = nbytes / LOAD_RATE
    said = f"{nbytes / 1e6:.1f} MB ({which}) into the engine at {LOAD_RATE / 1e6:.0f} MB/s"
    if facts.node.transport != "local":
        rate = facts.link_rate or LINK_RATE
        seconds += nbytes / rate
        said = (f"{nbytes / 1e6:.1f} MB ({which}) at {rate / 1e6:.0f} MB/s "
                + ("(measured)" if facts.link_rate else "(assumed)") + f", then into the engine at "
                f"{LOAD_RATE / 1e6:.0f} MB/s")
    return seconds, said


def work_part(option, request, facts, history, warm=None):
    """(seconds, basis, planned steps with their estimates) of the ``work`` part; ``warm``: the
    :class:`~archfleet.model.WarmSource` the build reads as a cache, if any."""
    files = history.files if history is not None else None
    plans = steps.planned(request, option.platform, facts.native, facts.emulated, files if files is not None else "")
    if not plans:
        return 0.0, "no steps", ()
    speed = node_speed(facts)
    cached = (history.cached_chains(option.node, [p.chain for p in plans])
              if history is not None and not request.no_cache else frozenset())
    times = history.step_times([p.key for p in plans]) if history is not None else {}
    factors = history.qemu_factors() if history is not None else {}
    context_bytes = history.context_bytes if history is not None else 0
    final = plans[-1].stage_index
    # what the warm child's inline cache holds (the final stage's steps of the build that pushed
    # it), or None when history did not record that build's steps
    warm_chains = history.child_chains(warm.ref) if warm is not None and history is not None else None
    out = []
    seconds = {}
    counts: dict[str, int] = {}
    for plan in plans:
        if plan.chain in cached:
            got, basis = steps.CACHED_SECONDS, "cached"
        elif warm_chains is not None and plan.chain in warm_chains and plan.stage_index == final:
            got, basis = steps.CACHED_SECONDS, f"warm (cached in {warm.node}'s child)"
        else:
            prior = steps.prior_of(plan, request, context_bytes)
            qemu = factors.get(str(plan.platform), prior.qemu)  # learned for the platform, else by what it runs
            got, basis = steps.estimate(plan, prior, steps.observations(times.get(plan.key, ())), speed, qemu,
                                        node=option.node)
            # a step the warm child does not hold (another chain: a changed build arg or file)
            # runs again here in full; only when history did not record that child's steps is
            # the cache's share a guess
            if warm is not None and warm_chains is None and plan.stage_index == final:
                got, basis = got * WARM_FACTOR, f"warm x{WARM_FACTOR:g} ({basis})"
        seconds[(plan.stage_index, plan.index)] = got
        out.append(attrs.evolve(plan, seconds=round(got, 3), basis=basis))
        kind = basis.split(" ", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    total = steps.critical_path(out, seconds)
    said = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    return total, f"{len(out)} step{'s' if len(out) > 1 else ''}: {said}", tuple(out)


@hookimpl
def archfleet_estimate(option, request, facts, history):
    if facts is None or not facts.native:
        return None  # nothing known of the node: the offer's prior stands
    warm = warm_ref(request, option.platform, option.node, facts.builder)
    work, work_basis, plans = work_part(option, request, facts, history, warm)
    fixed, fixed_basis = fixed_part(option, facts, history)
    transfer, transfer_basis = transfer_part(option, facts, history)
    push, push_basis = push_part(option, request, plans, history)
    parts = (("fixed", fixed), ("transfer", transfer), ("work", work), ("push", push))
    notes = [f"fixed {fixed:.1f}s {fixed_basis}"]
    if transfer_basis:
        notes.append(f"transfer {transfer:.1f}s: {transfer_basis}")
    notes.append(f"work {work:.1f}s ({work_basis})" + (f", starts warm from {warm.node}'s child" if warm else ""))
    if request.push:
        notes.append(f"push {push:.1f}s: {push_basis}")
    return Estimate(round(sum(v for _, v in parts), 2), "; ".join(notes), parts, plans)
