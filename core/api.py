"""archfleet's public API for plugins: everything a plugin may import, from one place.

Hooks are declared in :mod:`archfleet.hookspecs` (each documented there); implement them with
:data:`hookimpl`. The values a hook receives or returns are frozen attrs classes. Helpers a
strategy usually needs (build on a node's engine, a prior estimate, the Dockerfile analysis,
the registry client) are here too. Other modules are internal and may change without notice:
import from ``archfleet.api`` only. The built-in plugins (``archfleet.plugins.*``) follow this
rule, so they are examples of what an outside plugin can do.
"""

from . import binfmt
from .dockerfile import Analysis, Placement, Stage
from .dockerfile import analyse as analyse_dockerfile
from .engine import EngineCLI, discover_cli, local_candidates
from .errors import (
    ArchfleetError,
    BuildFailed,
    EnvironmentProblem,
    InfrastructureError,
    UsageError,
    VerificationFailed,
)
from .executor import Job
from .hookspecs import hookimpl, hookspec
from .index import verify_child
from .inventory import Config, Key
from .leases import read_local as read_local_leases
from .model import BuildRequest, ChildImage, NodeFacts, NodeSpec, Option, PlatformResult
from .nodebuild import LABEL_CONTEXT, LABEL_PLATFORM, build_and_push, child_tag, context_digest
from .planner import LINK_RATE, QEMU_FACTOR, node_speed, prior_seconds, reference_work
from .platforms import Platform, PlatformError, from_uname, native_platforms, read_cpu_flags
from .platforms import parse as parse_platform
from .probe import benchmark, probe_node, score_key
from .progress import Reporter
from .reference import Reference, parse_reference
from .registry import RegistryClient
from .transport import (CallerError, CommandNode, Completed, LocalTransport, Transport, guard_callback, guard_chunks,
                        parse_docker_host, pump_lines, supervise)

__all__ = [
    # hooks
    "hookimpl", "hookspec",
    # values
    "Platform", "parse_platform", "from_uname", "NodeSpec", "NodeFacts", "Option", "BuildRequest",
    "PlatformResult", "ChildImage", "Config", "Job", "Reporter", "Reference", "Completed",
    # errors
    "ArchfleetError", "UsageError", "EnvironmentProblem", "BuildFailed", "InfrastructureError",
    "VerificationFailed", "PlatformError",
    # strategy helpers
    "build_and_push", "child_tag", "context_digest", "LABEL_CONTEXT", "LABEL_PLATFORM",
    "prior_seconds", "node_speed", "reference_work", "QEMU_FACTOR", "LINK_RATE", "analyse_dockerfile", "Analysis", "Stage",
    "Placement",
    # transports and probing
    "Transport", "LocalTransport", "CommandNode", "CallerError", "guard_callback", "guard_chunks",
    "parse_docker_host", "pump_lines", "supervise", "Key", "probe_node", "benchmark", "discover_cli",
    "local_candidates", "EngineCLI", "binfmt", "native_platforms", "read_cpu_flags", "read_local_leases", "score_key",
    # registry
    "RegistryClient", "parse_reference", "verify_child",
]
