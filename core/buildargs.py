"""Build args: which names look like secrets, and which values may travel in an environment.

Two rules, both applied to build-arg *names* only (values are never inspected or shown):

- :func:`looks_secret` is BuildKit's ``SecretsUsedInArgOrEnv`` check (moby/buildkit
  ``frontend/dockerfile/dockerfile2llb``, ``getSecretsRegex``): a name whose ``_``-separated
  words include ``apikey``, ``auth``, ``credential(s)``, ``key``, ``password``, ``pword``,
  ``passwd``, ``secret`` or ``token`` (any case), unless a word is ``public``, ``file`` or
  ``version``. archfleet also counts ``TOKEN``, ``PASSWORD``, ``PASSWD`` and ``SECRET`` inside a
  word (``NPMTOKEN``, ``DBPASSWORD``), which BuildKit misses; ``KEY`` only as a word, so
  ``KEYBOARD`` or ``MONKEY`` are not flagged. A build arg's value ends up in the build log
  (BuildKit shows ``RUN`` steps with args expanded) and the image's history (``docker history``)
  wherever a ``RUN`` uses it; such names get a warning.

- :func:`env_passable` says whether a bare ``--build-arg NAME`` (value from archfleet's own
  environment, as ``docker build`` allows) can be handed to the engine CLI in *its* environment,
  which is how docker's CLI reads it (docker/cli ``opts.ValidateEnv``): then the value is never
  in any process's argv, here or on an SSH node. Names the engine CLI itself reads (``PATH``,
  ``HOME``, ``TMPDIR``, ``LD_*``, ``DOCKER_*``, ``BUILDX_*``, ``BUILDKIT_*``, ``XDG_*``,
  ``SSL_*``, the proxy variables) would change how the CLI runs on the node, so those are
  passed as ``NAME=VALUE`` in argv instead, like any explicit value.
"""

from __future__ import annotations

import re
from typing import Iterable

__all__ = ["looks_secret", "env_passable", "NAME", "mask", "secret_warning"]

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # a POSIX environment variable name

_DENY_WORD = re.compile(r"(?i)(?:_|^)(?:apikey|auth|credentials?|key|password|pword|passwd|secret|token)(?:_|$)")
_ALLOW_WORD = re.compile(r"(?i)(?:_|^)(?:public|file|version)(?:_|$)")
_DENY_PART = re.compile(r"(?i)token|password|passwd|secret")
_CLI_OWN = re.compile(r"(?i)^(?:PATH|HOME|TMPDIR|SHELL|IFS|ENV|BASH_ENV|LD_\w*|DOCKER_\w*|BUILDX_\w*|BUILDKIT_\w*"
                      r"|XDG_\w*|SSL_\w*|(?:HTTP|HTTPS|FTP|NO|ALL)_PROXY)$")


def looks_secret(name: str) -> bool:
    """True when a build arg called ``name`` probably carries a secret (rule in the module doc)."""
    if _ALLOW_WORD.search(name):
        return False
    return bool(_DENY_WORD.search(name) or _DENY_PART.search(name))


def env_passable(name: str) -> bool:
    """True when ``name`` may be set in the engine CLI's environment without changing how the
    CLI itself runs (a valid variable name, not one the CLI reads; see the module doc)."""
    return bool(NAME.match(name)) and not _CLI_OWN.match(name)


def mask(build_args: Iterable[tuple[str, str]]) -> str:
    """``repr`` of build args for traces and logs: names only, every value hidden (any value may
    be a token, whatever its name; pluggy's tracing prints a BuildRequest through this)."""
    return repr(tuple((k, "***") for k, _ in build_args))


def secret_warning(build_args: Iterable[tuple[str, str]]) -> str | None:
    """One line warning about the build args whose names look like secrets, or None."""
    names = [k for k, _ in build_args if looks_secret(k)]
    if not names:
        return None
    return (f"--build-arg {', '.join(names)}: {'this looks' if len(names) == 1 else 'these look'} like a secret; "
            "a build arg's value shows in the build log and stays in the image's history wherever a RUN uses it "
            "(archfleet keeps a bare "
            "--build-arg NAME off every command line, but not out of the image)")
