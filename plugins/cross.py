"""The ``cross`` strategy: a Dockerfile whose build stages sit on ``$BUILDPLATFORM`` compiles
at the node's native speed for any target; only target-platform stages that RUN something need
the target CPU (or QEMU). So the build is offered on any node, costed as that blend."""

from __future__ import annotations

from archfleet.api import Option, analyse_dockerfile, build_and_push, hookimpl, prior_seconds

STRATEGY = "cross"


@hookimpl
def archfleet_offer(platform, request, facts):
    analysis = analyse_dockerfile(request)
    if not analysis.cross:
        return []
    total = max(analysis.build_runs + analysis.target_runs, 1)
    target_share = analysis.target_runs / total
    out = []
    for f in facts:
        if not f.can_build or not f.native:
            continue
        build_on = f.native[0]
        if analysis.target_runs == 0 or platform in f.native:
            emulated, how = False, "no emulation needed"
        elif platform in f.emulated:
            emulated, how = True, f"{analysis.target_runs} target RUN under qemu-{platform.qemu_arch}"
        else:
            continue  # the final stage RUNs something and this node can neither run nor emulate it
        native_part = prior_seconds(request, f, emulated=False, share=1 - target_share)
        target_part = prior_seconds(request, f, emulated=emulated, share=target_share)
        out.append(Option(
            platform, STRATEGY, f.name, round(native_part + target_part, 2), emulated=emulated,
            why=f"cross-compiles on {f.name} ({build_on}): {analysis.describe()}; {how}",
        ))
    return out


@hookimpl
def archfleet_run(option, request, context):
    if option.strategy != STRATEGY:
        return None
    return build_and_push(option, request, context)
