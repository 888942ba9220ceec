"""The errors archfleet reports to people, each with the exit code it ends the command with.

Exit codes (documented in the CLI reference): 0 success, 1 a build or verification failed,
2 bad input (flags, files, platforms, tags, configuration), 3 the environment is not ready
(engine, registry, credentials, emulators), 130 interrupted.
"""

from __future__ import annotations


class ArchfleetError(Exception):
    """Base: ``str(err)`` is the one line shown to the user."""

    exit_code = 1


class UsageError(ArchfleetError):
    """Bad input: a flag, a file, a platform, a tag. Nothing was built or pushed."""

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
    """A node failed (unreachable, engine gone, connection dropped): re-plan elsewhere."""

    exit_code = 1

    def __init__(self, node: str, message: str):
        super().__init__(f"node {node}: {message}")
        self.node = node


class RegistryError(ArchfleetError):
    """The registry answered with an error we cannot recover from."""

    exit_code = 1

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status
