"""The ``qemu`` strategy: build under QEMU user-mode emulation on a node with the handler.

Offered where nothing runs on the node's own platform (no ``$BUILDPLATFORM`` stage, no stage
pinned to a platform the node runs natively: that is the ``cross`` strategy's case) and the
node emulates every platform the build RUNs on.
"""

from __future__ import annotations

from archfleet.api import Option, analyse_dockerfile, build_and_push, capable_nodes, hookimpl, prior_seconds

STRATEGY = "qemu"


@hookimpl
def archfleet_offer(platform, request, facts):
    analysis = analyse_dockerfile(request)
    out = []
    for f in capable_nodes(request, facts):  # can build, and its engine has what the Dockerfile needs
        if platform not in f.emulated or platform in f.native:
            continue
        placed = analysis.placement(platform, f.native, f.emulated)
        if placed.cross or not placed.possible:
            continue  # BuildKit runs those stages natively anyway: the cross strategy's case
        share = placed.emulated_share
        estimate = (prior_seconds(request, f, emulated=False, share=1 - share)
                    + prior_seconds(request, f, emulated=True, share=share))
        out.append(Option(platform, STRATEGY, f.name, round(estimate, 2),
                          why=f"{f.name} emulates {platform} with qemu-{platform.qemu_arch}", emulated=True))
    return out


@hookimpl
def archfleet_run(option, request, job, session):
    if option.strategy != STRATEGY:
        return None
    return build_and_push(option, request, job, registry=session.registry if session is not None else None)
