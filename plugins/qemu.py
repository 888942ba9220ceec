"""The ``qemu`` strategy: build under QEMU user-mode emulation on a node with the handler."""

from __future__ import annotations

from archfleet.api import Option, analyse_dockerfile, build_and_push, hookimpl, prior_seconds

STRATEGY = "qemu"


@hookimpl
def archfleet_offer(platform, request, facts):
    if analyse_dockerfile(request).cross:
        return []  # BuildKit runs $BUILDPLATFORM stages natively anyway: the cross strategy's case
    out = []
    for f in facts:
        if f.can_build and platform in f.emulated and platform not in f.native:
            out.append(Option(platform, STRATEGY, f.name, prior_seconds(request, f, emulated=True),
                              why=f"{f.name} emulates {platform} with qemu-{platform.qemu_arch}", emulated=True))
    return out


@hookimpl
def archfleet_run(option, request, context):
    if option.strategy != STRATEGY:
        return None
    return build_and_push(option, request, context)
