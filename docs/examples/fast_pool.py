"""A strategy plugin: build on nodes labelled `pool = "fast"` in nodes.toml, natively,
and tell the planner those nodes are twice as quick as their probe says."""

from archfleet.api import Option, build_and_push, capable_nodes, hookimpl, prior_seconds

STRATEGY = "fast-pool"


@hookimpl
def archfleet_offer(platform, request, facts):
    options = []
    for node in capable_nodes(request, facts):  # can build, and its engine can do what the Dockerfile asks
        labels = dict(node.node.labels)
        if labels.get("pool") == "fast" and platform in node.native:
            seconds = prior_seconds(request, node, emulated=False) / 2
            why = f"{node.name} is in the fast pool and runs {platform} natively"
            options.append(Option(platform, STRATEGY, node.name, seconds, why=why))
    return options


@hookimpl
def archfleet_run(option, request, job):
    if option.strategy != STRATEGY:
        return None  # another strategy's option
    return build_and_push(option, request, job)
