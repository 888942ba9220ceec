"""The ``native`` strategy: build on a node whose CPU runs the target platform natively.

A stage pinned to another platform (``FROM --platform=linux/amd64 ... AS build``) must run
there too: the option is offered only when the node runs that platform natively or emulates it,
and its RUN steps are costed under QEMU when emulated.
"""

from __future__ import annotations

from archfleet.api import Option, analyse_dockerfile, build_and_push, capable_nodes, hookimpl, prior_seconds

STRATEGY = "native"


@hookimpl
def archfleet_offer(platform, request, facts):
    analysis = analyse_dockerfile(request)
    out = []
    for f in capable_nodes(request, facts):  # can build, and its engine has what the Dockerfile needs
        if platform not in f.native:
            continue
        placed = analysis.placement(platform, f.native, f.emulated)
        if not placed.possible:
            continue  # a pinned stage RUNs on a platform this node can neither run nor emulate
        share = placed.emulated_share
        estimate = (prior_seconds(request, f, emulated=False, share=1 - share)
                    + prior_seconds(request, f, emulated=True, share=share))
        why = f"{f.name} runs {platform} natively" + (f"; {placed.how()}" if placed.emulated else "")
        out.append(Option(platform, STRATEGY, f.name, round(estimate, 2), why=why, emulated=bool(placed.emulated)))
    return out


@hookimpl
def archfleet_run(option, request, job, session):
    if option.strategy != STRATEGY:
        return None
    return build_and_push(option, request, job, registry=session.registry if session is not None else None)
