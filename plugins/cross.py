"""The ``cross`` strategy: a Dockerfile whose build stages sit on ``$BUILDPLATFORM`` (or on a
literal platform the node runs natively, ``FROM --platform=linux/amd64 ... AS build`` on an
amd64 node: the same thing there) compiles at the node's native speed for any target; only
stages that RUN something on another platform (the target's, or a pinned one the node does not
run) need QEMU. So the build is offered on every node that can run or emulate those, costed as
that blend."""

from __future__ import annotations

from archfleet.api import Option, analyse_dockerfile, build_and_push, capable_nodes, hookimpl, prior_seconds

STRATEGY = "cross"


@hookimpl
def archfleet_offer(platform, request, facts):
    analysis = analyse_dockerfile(request)
    out = []
    for f in capable_nodes(request, facts):  # can build, and its engine has what the Dockerfile needs
        if not f.native:
            continue
        placed = analysis.placement(platform, f.native, f.emulated)
        if not placed.cross or not placed.possible:
            continue  # nothing runs on this node's own platform, or a RUN needs a CPU it lacks
        share = placed.emulated_share
        native_part = prior_seconds(request, f, emulated=False, share=1 - share)
        emulated_part = prior_seconds(request, f, emulated=True, share=share)
        out.append(Option(
            platform, STRATEGY, f.name, round(native_part + emulated_part, 2), emulated=bool(placed.emulated),
            why=f"cross-compiles on {f.name} ({placed.build}): {analysis.describe()}; {placed.how()}",
        ))
    return out


@hookimpl
def archfleet_run(option, request, job, session):
    if option.strategy != STRATEGY:
        return None
    return build_and_push(option, request, job, registry=session.registry if session is not None else None)
