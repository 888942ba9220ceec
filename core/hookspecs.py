"""The hook contract between archfleet and its plugins (built-in ones included).

A plugin is any module or object with functions decorated ``@hookimpl`` (from ``archfleet.api``)
whose names are the hooks below; an implementation may take any subset of a hook's arguments.
Built-in strategies (``native``, ``qemu``, ``cross``), transports (``local``, ``ssh``) and the
``estimates`` plugin are plugins like any other; installed plugins are found through the
``archfleet`` entry-point group and are called before the built-ins.

Hooks run in this order for one build (only :mod:`archfleet.pipeline` calls them, through
pluggy, see :mod:`archfleet.manager`):

0. ``archfleet_node_keys``  (once)              -> the nodes.toml keys each transport reads
1. ``archfleet_add_nodes``  (once)              -> the nodes
2. ``archfleet_probe``      (once per node)     -> what each node can do
   ``archfleet_prepare``    (once, while the nodes are probed) -> look-ups that need no node
3. ``archfleet_offer``      (per platform x strategy) -> the options
4. ``archfleet_estimate``   (per option)        -> refined seconds
5. ``archfleet_connect``    (per node used)     -> a transport to run commands on the node
6. ``archfleet_run``        (per chosen option) -> the built (and pushed) platform
7. ``archfleet_build_finished`` (per platform), ``archfleet_index_pushed`` (per tag)
8. ``archfleet_session_end`` (once, last)

A plugin that raises, or answers with the wrong type, is named in the error archfleet reports.
Hooks are called through pluggy's ``HookCaller``, so ``@hookimpl(tryfirst=True)``,
``trylast``, ``wrapper=True`` and ``hookwrapper=True`` work as pluggy documents them.

``session`` (an :class:`archfleet.session.Session`) is one command's run of archfleet: a plugin
keeps what must live from one hook to the next (connections to its nodes, say) in
``session.state(<its name>)``, a dict of its own, never in module globals; it closes them in
``archfleet_session_end``.

Hooks marked *async* return an awaitable (an ``async def`` implementation); archfleet awaits it
on its event loop. Blocking work inside them belongs in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("archfleet")
hookimpl = pluggy.HookimplMarker("archfleet")


@hookspec
def archfleet_node_keys():
    """Declare the ``nodes.toml`` keys of the transports this plugin owns.

    Return a mapping of transport name to a mapping of key name to
    :class:`archfleet.inventory.Key` (type, required, default, check, hint, path). archfleet
    validates a node's table with the keys of its ``transport`` (besides the keys every node
    has: ``transport``, ``arch``, ``engine``, ``engine_cli``, ``docker_host``, ``max_builds``,
    ``labels``, ``enabled``) and reports every problem as one line naming ``file:line``, the
    node and the key; the values arrive in ``NodeSpec.settings``. A transport no plugin
    declares is an error in the file. Called once per command, before the nodes file is read.
    """


@hookspec
def archfleet_add_nodes(config, session):
    """Contribute build nodes.

    Called once per command, before probing, with ``config`` (an :class:`archfleet.inventory.Config`:
    the nodes file path, the nodes it defines and the command-line node settings). Return a list of
    :class:`~archfleet.model.NodeSpec` (possibly empty). Node names must be unique across all
    plugins; a duplicate is a configuration error. The ``local`` plugin contributes the
    ``local`` node this way. ``session`` is the command's :class:`archfleet.session.Session`.
    """


@hookspec(firstresult=True)
def archfleet_probe(node, config, session):
    """*Async.* Find out what ``node`` can do.

    Called once per enabled node, all nodes concurrently, with the command's ``config`` (an
    :class:`archfleet.inventory.Config`) and ``session`` (where a transport plugin keeps the
    connection it opens, for ``archfleet_connect`` to reuse). Only the plugin that owns ``node.transport`` answers;
    the others return None (firstresult: the first non-None wins).
    Return an awaitable resolving to :class:`~archfleet.model.NodeFacts`. An unreachable node
    is not an exception: return facts with ``reachable=False`` and a one-line ``error``. A node
    that knows builds are already running on it (other archfleet runs' leases, a CI queue)
    says so in ``busy``: the seconds until each taken slot frees up; the planner waits for them.
    """


@hookspec
def archfleet_prepare(request, session):
    """*Async.* Start what a strategy needs to know that does not depend on the nodes.

    Called once per ``build`` and ``plan`` with the checked ``request`` (a
    :class:`~archfleet.model.BuildRequest`) and the command's ``session``, at the same time as
    the nodes are probed (so a look-up in a registry costs no time of its own). Return None, or
    an awaitable (an ``async def``): archfleet awaits every plugin's before asking for offers,
    and a failure is reported like any hook's. Keep what it found in ``session.state(<your
    plugin>)`` for ``archfleet_offer``. ``request.bases`` is not resolved yet here.
    """


@hookspec
def archfleet_offer(platform, request, facts, session):
    """Offer ways to build ``platform`` for ``request``.

    Called for every requested platform with ``facts``, the tuple of every probed node's
    :class:`~archfleet.model.NodeFacts` (unreachable ones included; skip them). Every strategy
    plugin answers with a list of :class:`~archfleet.model.Option` (empty when it cannot build
    the platform), or with an awaitable resolving to one (to ask a registry, say: all offers
    are awaited at once): return either, or None when the plugin is no strategy. ``Option.strategy`` must be the strategy's own name: it is how
    ``archfleet_run`` finds the plugin again; ``Option.node`` must be a probed node.
    ``request`` is the request as ``platform`` sees it
    (:meth:`~archfleet.model.BuildRequest.for_platform`): ``request.dockerfile`` is that
    platform's own Dockerfile when ``-f PLATFORM=PATH`` gave it one, and
    ``analyse_dockerfile(request)`` analyses that file. The same holds in ``archfleet_estimate``
    and ``archfleet_run``.
    ``session`` is the command's :class:`archfleet.session.Session` (what a strategy looked up
    once for every platform, a registry client it opened, lives there until ``archfleet_run``).
    ``request.bases`` holds the base images as the registry resolved them for this build (see
    :mod:`archfleet.buildkey`).
    """


@hookspec(firstresult=True)
def archfleet_estimate(option, request, facts, history):
    """Refine the time estimate of ``option``, in seconds.

    Called once per option after all offers are in, with the ``request``, ``facts`` (the
    :class:`~archfleet.model.NodeFacts` of the option's node) and ``history`` (an :class:`archfleet.history.HistoryView`: past durations of this context and
    project, or None when history is off). Return ``(seconds, basis)`` where ``basis`` is one
    line saying where the number comes from, a bare number, or None to keep the offer's
    estimate. firstresult: the first plugin answering decides; installed plugins are asked
    before the built-in ``estimates`` plugin. The planner minimises the time the last platform
    finishes using these numbers.
    """


@hookspec(firstresult=True)
def archfleet_connect(node, facts, session):
    """*Async.* A transport to ``node`` for running commands during the build.

    Called at most once per node per run, when the first option on that node starts, with
    the node's ``facts`` from the probe. Only the plugin that owns ``node.transport`` answers.
    Return an awaitable resolving to an object with the :class:`archfleet.transport.Transport`
    interface. The plugin owns it: it may reuse what it opened at probe time (kept in
    ``session``) and closes it in ``archfleet_session_end``.
    """


@hookspec(firstresult=True)
def archfleet_run(option, request, job, session):
    """*Async.* Build ``option.platform`` as ``option`` says, and push it if ``request.push``.

    Called once per chosen option (and again for a fallback option when a node failed);
    ``request`` is the :class:`~archfleet.model.BuildRequest` (tags, build args, ``push``).
    Only the plugin whose strategy name is ``option.strategy`` answers; the others return
    None. ``job`` is an :class:`archfleet.executor.Job`: the transport to the node, the node's
    facts, a reporter for progress and log lines, and ``await job.ready_to_push()``
    which a strategy must await between building and pushing (it returns once every platform
    is built, and raises if another platform failed, so nothing is pushed half-way).

    ``session`` is the command's :class:`archfleet.session.Session`, as ``archfleet_offer`` had it.

    Return an awaitable resolving to :class:`~archfleet.model.PlatformResult`. Raise
    :class:`archfleet.errors.InfrastructureError` when the node failed (archfleet re-plans
    the platform elsewhere) and :class:`archfleet.errors.BuildFailed` when the build itself
    failed (reported, not retried). When another platform fails for good (and not
    ``--allow-partial``), the awaitable is cancelled (``asyncio.CancelledError``) wherever it
    is, building or waiting: stop the node's work in a ``finally`` and let the cancellation
    propagate.
    """


@hookspec
def archfleet_build_finished(result):
    """A platform finished: ``result`` is its :class:`~archfleet.model.PlatformResult`.

    Called once per platform that succeeded, after the index was assembled (or after the
    builds when nothing is pushed). Return value ignored.
    """


@hookspec
def archfleet_index_pushed(ref, digest):
    """The index was pushed to tag ``ref`` (a string) with manifest ``digest``.

    Called once per tag, in the order of the ``-t`` flags, after every tag has moved. Return
    value ignored.
    """


@hookspec
def archfleet_session_end(session):
    """The command is ending: close connections and release what the plugin holds (what it
    kept in ``session``, the command's :class:`archfleet.session.Session`, under
    ``session.state(<its name>)``).

    Called once per command (``build``, ``plan``, ``ls``, ``doctor``), last, on the event loop,
    whatever happened; may return an awaitable, which archfleet awaits. Return value otherwise
    ignored; an error here is not reported (the command's own outcome is).
    """
