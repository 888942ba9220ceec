"""The ``native`` strategy: build on a node whose CPU runs the target platform natively."""

from __future__ import annotations

from archfleet.api import Option, build_and_push, hookimpl, prior_seconds

STRATEGY = "native"


@hookimpl
def archfleet_offer(platform, request, facts):
    out = []
    for f in facts:
        if f.can_build and platform in f.native:
            out.append(Option(platform, STRATEGY, f.name, prior_seconds(request, f, emulated=False),
                              why=f"{f.name} runs {platform} natively"))
    return out


@hookimpl
def archfleet_run(option, request, context):
    if option.strategy != STRATEGY:
        return None
    return build_and_push(option, request, context)
