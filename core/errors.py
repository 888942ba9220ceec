"""Every error archfleet reports to people, each with the exit code it ends the command with and
what the executor does with it.

Exit codes (documented in the CLI reference): 0 success, 1 a build or verification failed,
2 bad input (flags, files, platforms, tags, configuration), 3 the environment is not ready
(engine, registry, credentials, emulators), 70 an internal error (a bug), 130 interrupted.

What happens to a platform whose build raised one of these is decided by the error's *type*
(its ``retry_elsewhere`` attribute), never by matching the text of a message:

- ``retry_elsewhere = True`` (:class:`InfrastructureError` and its subclasses): the node failed,
  not the build. The node is marked down for this run and the platform is planned again on the
  next-best option.
- ``retry_elsewhere = False`` (everything else): the failure would happen on any node (the
  Dockerfile, the registry, the credentials, the input). It is reported once and the other
  platforms are cancelled (unless ``--allow-partial``).

The text of each error (``str(err)``) is the one line shown to the user: it names what failed
(a platform, node, file, flag or tag) and, where there is one, what to do.
"""

from __future__ import annotations


class ArchfleetError(Exception):
    """Base: ``str(err)`` is the one line shown to the user."""

    exit_code = 1
    retry_elsewhere = False


class UsageError(ArchfleetError):
    """Bad input: a flag, a file, a platform, a tag. Checked before anything is built."""

    exit_code = 2


class EnvironmentProblem(ArchfleetError):
    """The machine or network is not ready: no engine, registry unreachable, bad credentials."""

    exit_code = 3


class BuildFailed(ArchfleetError):
    """The user's build failed (a Dockerfile step exited non-zero). Not retried elsewhere."""

    exit_code = 1


class VerificationFailed(ArchfleetError):
    """A pushed image is not the platform that was asked for."""

    exit_code = 1


class InfrastructureError(ArchfleetError):
    """A node failed (unreachable, engine gone, connection dropped, out of disk): the platform is
    re-planned on another node and this node is not used again in this run."""

    exit_code = 1
    retry_elsewhere = True

    def __init__(self, node: str, message: str, fix: str | None = None):
        super().__init__(f"node {node}: {message}")
        self.node = node
        self.fix = fix  # what to do about it, one line, when the raiser knows


class RegistryError(ArchfleetError):
    """The registry answered with an error we cannot recover from (a 4xx other than auth, a
    digest mismatch, a malformed answer). Not retried on another node: every node would push to
    the same registry."""

    exit_code = 1

    def __init__(self, message: str, status: int | None = None, codes: tuple[str, ...] = ()):
        super().__init__(message)
        self.status = status
        self.codes = codes  # the distribution error codes of the answer (MANIFEST_BLOB_UNKNOWN, ...)


class RegistryRefused(EnvironmentProblem):
    """The registry refused us: credentials missing or rejected (401/403, ``denied``), or a rate
    limit or quota (429, ``toomanyrequests``). The fix is on the user's side (``docker login``,
    access rights, waiting); not retried on another node."""

    def __init__(self, message: str, status: int | None = None, codes: tuple[str, ...] = ()):
        super().__init__(message)
        self.status = status
        self.codes = codes  # the distribution error codes of the answer (MANIFEST_BLOB_UNKNOWN, ...)


class RegistryUnreachable(EnvironmentProblem):
    """The registry (or its token service) cannot be reached at all: connection refused, no
    route, timed out, name not found. Nothing was said about credentials."""


class PluginError(ArchfleetError):
    """A plugin raised something that is not an :class:`ArchfleetError`, or answered with a
    value of the wrong type. The message names the plugin and the hook."""

    exit_code = 1


class Aborted(ArchfleetError):
    """This platform was stopped because another platform failed for good (nothing is pushed
    half-way). Never reported on its own: the failure that caused it is."""

    exit_code = 1


class PlatformsFailed(ArchfleetError):
    """One or more platforms failed for good (the others were cancelled, so nothing reached the
    tags), or with ``--allow-partial`` every platform failed. ``causes`` holds each failure as
    ``(platform, error)``; the exit code is the first failure's, so a registry refusal still ends
    the command with 3 and a failed build with 1."""

    def __init__(self, message: str, causes: tuple = ()):
        super().__init__(message)
        self.causes = tuple(causes)
        if self.causes:
            self.exit_code = self.causes[0][1].exit_code


class Interrupted(ArchfleetError):
    """Ctrl-C (SIGINT) arrived while something could not be stopped half-way (the index being
    pushed to the tags); the message says what was completed. Exit 130, like a plain interrupt."""

    exit_code = 130
