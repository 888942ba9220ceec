"""Image references (``registry/repo:tag@digest``), parsed and validated like distribution's
``reference`` package (github.com/distribution/reference, ``regexp.go`` and ``normalize.go``), with
Docker Hub's defaults (``app`` and ``docker.io/app`` -> ``docker.io/library/app``).

distribution's grammar is ASCII only: its word class in the tag rule is ``[A-Za-z0-9_]``, a tag is at
most 128 characters, a whole name at most 255. A registry port must be 1-65535 (the grammar allows
any digits; nothing can listen on the rest). A reference to *push to* (``-t``) names a tag and no
digest: a registry stores a pushed manifest under its own digest, and ``repo:tag@digest`` would
make archfleet move a tag the user pinned to a digest (:func:`parse_push_target`).
"""

from __future__ import annotations

import ipaddress
import re

import attrs

from .errors import UsageError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN = re.compile(
    r"(?:localhost|\[[0-9a-fA-F:]+\]|(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
    r"(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*)(?::([0-9]+))?"
)
TAG_MAX = 128  # distribution: tag = [\w][\w.-]{0,127}
NAME_MAX = 255  # distribution: NameTotalLengthMax
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,%d}" % (TAG_MAX - 1))  # \w is ASCII in Go's regexp
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"


@attrs.frozen
class Reference:
    """An image reference, parsed and normalised (:func:`parse_reference`): registry (``host[:port]``, ``docker.io`` for Docker Hub), repository path, tag and/or ``sha256:`` digest."""
    registry: str  # host[:port], "docker.io" for Docker Hub
    repository: str  # path inside the registry
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host the registry API is served from (Docker Hub's is ``registry-1.docker.io``); credentials are looked up by :attr:`registry`, not this."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def with_tag(self, tag: str) -> "Reference":
        """The same repository at ``tag`` (no digest)."""
        return attrs.evolve(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> "Reference":
        """The same repository at ``digest`` (no tag)."""
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
    """Parse and validate ``[registry/]repo[:tag][@sha256:hex]``.

    Raises :class:`UsageError` with one line naming ``what`` (a flag such as ``--tag``), the value
    and the rule it breaks."""
    original = text

    def bad(rule: str) -> UsageError:
        return UsageError(f"invalid {what} {original!r}: {rule}")

    if not text.strip():
        raise bad("it is empty; give [REGISTRY/]NAME[:TAG], e.g. 127.0.0.1:5000/app:1.0")
    if not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
        raise bad("references are printable ASCII without whitespace (distribution's reference grammar)")
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise bad("digest must be sha256:<64 lowercase hex digits>")
    tag = None
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, tag = text.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise bad(f"tag {tag!r} must be 1-{TAG_MAX} of A-Z a-z 0-9 _ . - and not start with . or -")
    first, _, rest = text.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, path = first, rest
        m = _DOMAIN.fullmatch(registry)
        if not m:
            raise bad(f"bad registry host {registry!r}")
        if m.group(1) is not None and not 1 <= int(m.group(1)) <= 65535:
            raise bad(f"registry port {m.group(1)} is not 1-65535")
    else:
        registry, path = DOCKER_HUB, text
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"  # distribution's normalize.go: official images live under library/
    if not _PATH.fullmatch(path):
        raise bad(f"repository {path!r} must be lowercase letters, digits and separators (. _ __ -), "
                  "in /-separated parts")
    if len(registry) + len(path) + 1 > NAME_MAX:
        raise bad(f"the name is longer than {NAME_MAX} characters")
    return Reference(registry, path, tag if tag or digest else "latest", digest)


def parse_push_target(text: str, *, what: str = "--tag") -> Reference:
    """A reference to push to (``-t``): like :func:`parse_reference`, but a digest is refused.

    A registry files a pushed manifest under the digest of its bytes, so ``repo@sha256:...`` can
    only name something that already exists, and ``repo:tag@sha256:...`` pins the tag to one
    manifest, which a push would then move."""
    ref = parse_reference(text, what=what)
    if ref.digest is not None:
        printed = " (the index's digest is printed when it is pushed)" if what in ("-t", "--tag") else ""
        raise UsageError(f"invalid {what} {text!r}: a digest cannot be pushed to; give {ref.name}:TAG{printed}")
    return ref


def child_ref(ref: Reference, suffix: str, *, what: str = "--tag") -> Reference:
    """``<tag>-<suffix>`` in ``ref``'s repository: where one platform's image is pushed
    (``suffix`` is e.g. ``linux-arm-v7``). Raises :class:`UsageError` when that tag would be
    longer than distribution's 128 characters, naming the tag and how much shorter it must be."""
    tag = f"{ref.tag or 'latest'}-{suffix}"
    if len(tag) > TAG_MAX:
        raise UsageError(
            f"invalid {what} {str(ref)!r}: the per-platform tag {tag[:20]}...-{suffix} would be {len(tag)} "
            f"characters, more than the registry's {TAG_MAX}; shorten the tag by {len(tag) - TAG_MAX}")
    return ref.with_tag(tag)


def parse_registry_host(text: str, *, what: str = "--insecure-registry") -> str:
    """A registry given alone (``HOST[:PORT]``, as ``--insecure-registry`` and ``doctor --registry``
    take it): checked like a reference's registry part, port 1-65535. Returns it unchanged."""
    m = _DOMAIN.fullmatch(text) if text.isascii() else None
    if m is None:
        raise UsageError(f"{what} {text!r}: give HOST[:PORT] only, e.g. 10.0.0.5:5000")
    if m.group(1) is not None and not 1 <= int(m.group(1)) <= 65535:
        raise UsageError(f"{what} {text!r}: port {m.group(1)} is not 1-65535")
    return text


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


SEED_CHILD_TAGS = "{tag}-{platform}"  # --child-tags alone: the seed recipe's <tag>-<os>-<arch>[-<variant>]
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
CHILD_TAG_FIELDS = ("tag", "platform", "os", "arch", "variant")


def child_tag_name(template: str, ref: Reference, platform, *, what: str = "--child-tags") -> str:
    """The tag ``platform``'s child gets next to ``ref`` under ``template`` (``--child-tags``):
    ``{tag}`` is ``ref``'s tag, ``{platform}`` ``<os>-<arch>[-<variant>]``, ``{os}``, ``{arch}``
    and ``{variant}`` (empty when the platform has none) its parts; ``{tag}-{arch}{variant}`` gives
    ``1.0-armv7``. Raises :class:`UsageError` naming ``what`` for an unknown placeholder, a stray
    brace, or a result that is not a tag in distribution's grammar (128 characters at most)."""
    values = {"tag": ref.tag or "latest", "platform": platform.tag_suffix, "os": platform.os,
              "arch": platform.architecture, "variant": platform.variant or ""}

    def field(m: re.Match) -> str:
        if m.group(1) not in values:
            raise UsageError(f"{what} {template!r}: unknown placeholder {{{m.group(1)}}} (use "
                             + ", ".join(f"{{{f}}}" for f in CHILD_TAG_FIELDS) + ")")
        return values[m.group(1)]

    name = _PLACEHOLDER.sub(field, template)
    if "{" in name or "}" in name:
        raise UsageError(f"{what} {template!r}: a brace that opens no placeholder")
    if not _TAG.fullmatch(name):
        if len(name) > TAG_MAX:
            raise UsageError(f"{what} {template!r}: the tag for {platform} would be {len(name)} characters, more "
                             f"than the registry's {TAG_MAX}; shorten the tag {str(ref)!r} or the template by "
                             f"{len(name) - TAG_MAX}")
        raise UsageError(f"{what} {template!r}: gives {name!r} for {platform}, not a tag (1-{TAG_MAX} of "
                         "A-Z a-z 0-9 _ . -, not starting with . or -)")
    return name
