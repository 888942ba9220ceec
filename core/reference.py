"""Image references (``registry/repo:tag@digest``), parsed and validated like distribution's
``reference`` package, with Docker Hub's defaults (``app`` -> ``docker.io/library/app``)."""

from __future__ import annotations

import ipaddress
import re

import attrs

from .errors import UsageError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN = re.compile(
    r"^(?:localhost|\[[0-9a-fA-F:]+\]|(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
    r"(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*)(?::[0-9]+)?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"


@attrs.frozen
class Reference:
    registry: str  # host[:port], "docker.io" for Docker Hub
    repository: str  # path inside the registry
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def with_tag(self, tag: str) -> "Reference":
        return attrs.evolve(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> "Reference":
        return attrs.evolve(self, tag=None, digest=digest)

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/`` in the API: the digest, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_reference(text: str, *, what: str = "tag") -> Reference:
    """Parse and validate; raise :class:`UsageError` with one line saying what is wrong."""
    original = text
    if not text or text != text.strip() or any(c.isspace() for c in text):
        raise UsageError(f"invalid {what} {original!r}: must not be empty or contain whitespace")
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST.match(digest):
            raise UsageError(f"invalid {what} {original!r}: digest must be sha256:<64 hex digits>")
    tag = None
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, tag = text.rsplit(":", 1)
        if not _TAG.match(tag):
            raise UsageError(
                f"invalid {what} {original!r}: tag {tag!r} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
            )
    first, _, rest = text.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, path = first, rest
        if not _DOMAIN.match(registry):
            raise UsageError(f"invalid {what} {original!r}: bad registry host {registry!r}")
    else:
        registry, path = DOCKER_HUB, text
        if "/" not in path:
            path = f"library/{path}"
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if not _PATH.match(path) or len(registry) + len(path) + 1 > 255:
        raise UsageError(
            f"invalid {what} {original!r}: repository {path!r} must be lowercase letters, digits "
            "and separators (. _ __ -), in /-separated parts"
        )
    return Reference(registry, path, tag if tag or digest else "latest", digest)


def is_loopback_host(registry: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1, with or without a port."""
    host = registry
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
