"""archfleet's public API for plugins: everything a plugin may import, from one place, and no more.

Hooks are declared in :mod:`archfleet.hookspecs` (each documented there); implement them with
:data:`hookimpl`. Other modules are internal and may change without notice. The built-in plugins
(``archfleet.plugins.*``) and the documentation's example import from here only, and a test
keeps it so: what they use is what this module exports, plus the types the hooks receive or
return (for annotations) and the two errors the hook contract asks a plugin to raise.

- Hook values (frozen attrs classes unless said): :class:`Platform`, :class:`NodeSpec`,
  :class:`NodeFacts`, :class:`Option`, :class:`BuildRequest`, :class:`PlatformResult`,
  :class:`Config` (``archfleet_add_nodes``), :class:`Job` (``archfleet_run``; mutable),
  :class:`Transport` (the interface ``archfleet_connect`` answers with), :class:`Key`
  (``archfleet_node_keys``).
- Errors: :class:`InfrastructureError` (the node failed: re-planned elsewhere),
  :class:`BuildFailed` (the build failed: reported), :class:`PlatformError`.
- Strategies: :func:`capable_nodes` (the nodes that can build the request: reachable, with a
  builder, and an engine that has what the Dockerfile needs), :func:`build_and_push` (build in
  the node's engine, wait at the push gate, push by digest), :func:`context_digest`,
  :func:`reuse_key` and its label :data:`LABEL_REUSE_KEY` (the ``reuse`` strategy), :func:`prior_seconds`,
  :func:`node_speed`, :data:`LINK_RATE`, :data:`LOAD_RATE`,
  :class:`Estimate` (what ``archfleet_estimate`` may answer: seconds, basis, parts, steps) and the
  pieces of the built-in estimates: :mod:`steps` (the steps a build runs, their priors and
  learned times), :func:`fixed_prior`, :func:`push_prior`, :data:`PUSH_BASE`, :data:`PUSH_RATE`,
  :func:`analyse_dockerfile` (its ``placement()`` says what a node can run), :class:`RegistryClient`,
  :func:`parse_reference`, :func:`warm_ref` and :data:`WARM_FACTOR` (the cross-node warm cache:
  :mod:`archfleet.buildcache`).
- Transports: :class:`LocalTransport`, :class:`CommandNode` (context sync and leases over ``run``),
  :class:`Completed`, :func:`pump_lines`, :func:`pump_bytes` (a ``Transport.stream``'s output),
  :func:`reap` (a stopped command's end awaited through a second cancel),
  :func:`supervise`, :func:`guard_callback`,
  :func:`guard_chunks`, :class:`CallerError`, :func:`parse_docker_host`, :func:`probe_node`,
  :func:`benchmark`, :func:`adapter_for` (the node's engine adapter: its CLIs, its probe,
  whether it needs the engine socket), :mod:`binfmt`, :func:`docker_module` (docker-py, for a
  transport's ``docker_client``: imported under archfleet's one lock),
  :func:`native_platforms`, :func:`read_cpu_flags`, :func:`from_uname`, :func:`read_local_leases`.
"""

from . import binfmt
from .dockerlib import module as docker_module
from .dockerfile import analyse as analyse_dockerfile
from .engines import adapter_for
from .engines import capable as capable_nodes
from .errors import BuildFailed, InfrastructureError
from .executor import Job
from .hookspecs import hookimpl
from .inventory import Config, Key
from .leases import read_local as read_local_leases
from .buildcache import WARM_FACTOR, warm_ref
from .buildkey import LABEL_REUSE_KEY, reuse_key
from . import steps
from .model import BuildRequest, Estimate, NodeFacts, NodeSpec, Option, PlatformResult
from .nodebuild import build_and_push, context_digest
from .planner import LINK_RATE, LOAD_RATE, PUSH_BASE, PUSH_RATE, fixed_prior, node_speed, prior_seconds, push_prior
from .platforms import Platform, PlatformError, from_uname, native_platforms, read_cpu_flags
from .probe import benchmark, probe_node
from .reference import parse_reference
from .registry import RegistryClient
from .transport import (CallerError, CommandNode, Completed, LocalTransport, Transport, guard_callback, guard_chunks,
                        parse_docker_host, pump_bytes, pump_lines, reap, supervise)

__all__ = [
    # hooks
    "hookimpl",
    # hook values
    "Platform", "NodeSpec", "NodeFacts", "Option", "BuildRequest", "PlatformResult", "Config", "Job", "Transport",
    "Key",
    # errors
    "InfrastructureError", "BuildFailed", "PlatformError",
    # strategy helpers
    "capable_nodes", "build_and_push", "context_digest", "LABEL_REUSE_KEY", "reuse_key", "prior_seconds",
    "node_speed", "LINK_RATE", "LOAD_RATE", "analyse_dockerfile", "RegistryClient",
    "parse_reference", "warm_ref", "WARM_FACTOR", "Estimate", "steps", "fixed_prior", "push_prior", "PUSH_BASE",
    "PUSH_RATE",
    # transports and probing
    "LocalTransport", "CommandNode", "Completed", "pump_lines", "pump_bytes", "reap", "supervise", "guard_callback", "guard_chunks",
    "CallerError", "parse_docker_host", "probe_node", "benchmark", "adapter_for", "binfmt", "docker_module",
    "native_platforms", "read_cpu_flags", "from_uname", "read_local_leases",
]
