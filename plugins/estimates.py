"""The built-in ``estimates`` plugin: history first, then the strategy's prior, plus transfer.

- this context (or, failing that, this project) was built with this option before: the median
  of the last runs;
- else the offer's prior, rescaled by this project's typical work if known, with the QEMU
  factor learned on that node for emulated options;
- plus sending the context to a remote node that has not seen it (bytes / the link rate
  measured on earlier syncs to that node, or an assumed 50 MB/s);
- an option that starts warm (another node built the platform's last child, which its build
  reads as a cache: :func:`archfleet.buildcache.warm_ref`) takes the median of its own warm
  builds when history has them, else the cold estimate's build part x ``WARM_FACTOR``.
"""

from __future__ import annotations

from archfleet.api import LINK_RATE, QEMU_FACTOR, WARM_FACTOR, hookimpl, node_speed, reference_work, warm_ref


@hookimpl
def archfleet_estimate(option, request, facts, history):
    if history is None:
        return None
    warm = warm_ref(request, option.platform, option.node, facts.builder if facts else None)
    if warm is not None:
        past = history.past(option, warm=True)
        if past is not None:
            return past.seconds, f"median of the last {past.runs} warm builds of {past.basis} with this option"
    past = history.past(option)
    if past is not None:
        if warm is not None:
            return (round(past.seconds * WARM_FACTOR, 2), f"median of the last {past.runs} builds of {past.basis} "
                    f"with this option x{WARM_FACTOR:g}: starts warm from {warm.node}'s child")
        return past.seconds, f"median of the last {past.runs} builds of {past.basis} with this option"
    seconds = option.estimate
    notes = [f"prior {option.estimate:.1f}s (Dockerfile work / node speed {node_speed(facts):.2f}"
             + (f", RUN steps x qemu {QEMU_FACTOR:g}" if option.emulated else "") + ")"] if facts else ["prior"]
    try:
        work = history.db.project_work(history.project_key)
        learned = history.db.qemu_factor(option.node) if option.emulated else None
    except Exception:
        work = learned = None
    if work:
        scale = work / reference_work(request)
        seconds *= scale
        notes.append(f"x{scale:.2f} for this project's past work")
    if learned:
        seconds *= learned / QEMU_FACTOR
        notes.append(f"qemu factor {learned:.1f} learned on {option.node}")
    if warm is not None:
        seconds *= WARM_FACTOR
        notes.append(f"x{WARM_FACTOR:g}: starts warm from {warm.node}'s child")
    if facts is not None and facts.node.transport != "local" and not history.synced_before(option.node):
        rate = facts.link_rate or LINK_RATE
        transfer = history.context_bytes / rate
        seconds += transfer
        notes.append(f"+{transfer:.1f}s to send {history.context_bytes / 1e6:.1f} MB at {rate / 1e6:.0f} MB/s "
                     + ("(measured)" if facts.link_rate else "(assumed)"))
    return round(seconds, 2), "; ".join(notes)
