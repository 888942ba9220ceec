"""An async OCI distribution client: manifests and blobs, with Docker's credentials.

Rules, and where each comes from:

- **Credentials** come from the Docker config through ``docker.auth`` (``auths``, ``credsStore``,
  ``credHelpers``), looked up under the *registry's name* as ``docker login`` stores it: Docker
  Hub's API host ``registry-1.docker.io`` is looked up as ``docker.io``, which ``docker.auth``
  resolves to the ``https://index.docker.io/v1/`` entry (or asks a helper for that URL), as the
  docker CLI does. The lookup (it may run a credential helper) runs in a thread.
- **Auth** follows the registry's ``WWW-Authenticate`` challenge: Basic, or the Bearer token flow
  (realm/service/scope; the refresh-token grant for an identity token), per the distribution
  token spec. Credentials go to a token realm only over HTTPS, or over plain HTTP when the
  registry itself may speak plain HTTP (loopback or ``--insecure-registry``) *and* the realm is on
  the registry's own host; otherwise nothing is sent and the run stops with one line.
- **TLS.** Registries are trusted the way dockerd trusts them: the system's CA store
  (:func:`trust_roots`), and for a registry with its own CA
  ``/etc/docker/certs.d/<host[:port]>/*.crt`` as extra CA roots and ``*.cert``/``*.key`` pairs
  client certificates (``$ARCHFLEET_CERTS_D`` names another directory). For an *insecure*
  registry (loopback, or ``--insecure-registry``) archfleet does what dockerd does: HTTPS first;
  if the certificate does not verify, HTTPS without verification; plain HTTP only when TLS
  itself is refused (the port does not speak TLS).
- **Retries.** Dropped connections and 5xx answers are retried with back-off, 429 (and any
  answer carrying ``Retry-After``) after the time the registry asks for, up to
  :data:`RETRY_AFTER_CAP`; a registry asking for longer is reported, not waited for. A request
  that is not safe to repeat (a blob upload's PATCH/PUT) is never re-sent after it may have
  reached the registry: the upload is checked (HEAD of the blob) and started again in a new
  session.
- **Blob copies stream**: a blob is never held whole in memory; blobs larger than
  :data:`CHUNK` are uploaded in chunks (PATCH with ``Content-Range``), as the distribution spec
  describes. A cross-repository mount asks for a token covering ``repository:<src>:pull`` and
  ``repository:<dst>:pull,push`` (Docker Hub and GHCR need both).
- Digests are computed over the exact bytes sent or received.

Errors (all one line): :class:`RegistryRefused` (exit 3) when the registry refuses us
(credentials missing or rejected, 401/403 ``denied``, 429 ``toomanyrequests``, a token realm we
will not send credentials to); :class:`EnvironmentProblem` (exit 3) when it cannot be reached or
its TLS is not trusted; :class:`RegistryError` (exit 1) for any other error answer.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import copy
import email.utils
import functools
import hashlib
import json
import logging
import os
import re
import ssl
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterable, Sequence

import attrs

from . import dockerlib, mediatypes
from .errors import ArchfleetError, EnvironmentProblem, RegistryError, RegistryRefused, RegistryUnreachable
from .httpxlib import httpx
from .reference import DOCKER_HUB, DOCKER_HUB_API, Reference, is_loopback_host

log = logging.getLogger(__name__)

RETRIES = 4
BACKOFF = 0.25  # seconds, doubled each retry
RETRY_AFTER_CAP = 60.0  # seconds: the longest Retry-After archfleet waits for (longer: reported)
CHUNK = 8 * 1024 * 1024  # bytes per upload PATCH; a blob copy holds at most about this much
CACHED_BLOB = 256 * 1024  # bytes: a blob read up to this size is kept for the client's life (configs)

sleep = asyncio.sleep  # the one place the client waits (tests patch it)

_SAFE_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
def _not_sent() -> tuple[type, ...]:
    """The httpx errors raised before a request left this machine: safe to send again whatever it was."""
    return (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data`` (the OCI digest of those exact bytes)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@attrs.frozen
class Manifest:
    """A manifest or index exactly as the registry served it."""

    body: bytes
    media_type: str
    digest: str

    def json(self) -> dict:
        """The manifest parsed (a dict)."""
        return json.loads(self.body)


class _Unfinished(RegistryError):
    """A request that is not safe to repeat (an upload's PATCH/PUT) failed after it may have
    reached the registry: the caller checks what arrived and starts the upload again."""


_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


def credential_name(host: str) -> str:
    """The name ``docker login`` stores a registry's credentials under, for a registry name or
    API host: Docker Hub (``docker.io``, ``index.docker.io``, ``registry-1.docker.io``) is
    ``docker.io`` (``docker.auth`` maps it to ``https://index.docker.io/v1/``); others as given."""
    return DOCKER_HUB if host in (DOCKER_HUB, DOCKER_HUB_API, "index.docker.io") else host


def login_hint(host: str) -> str:
    """The ``docker login`` command that stores credentials where archfleet looks for them."""
    name = credential_name(host)
    return "`docker login`" if name == DOCKER_HUB else f"`docker login {name}`"


def load_credentials(registry: str, docker_config: dict | None = None) -> dict[str, str] | None:
    """Username/password or identity token for ``registry`` (a registry name or API host; see
    :func:`credential_name`) from the Docker config, or None. Blocking: it may run a credential
    helper (``docker-credential-<name>``). A broken or missing helper is an
    :class:`EnvironmentProblem` naming it; no secret is ever part of a message."""
    name = credential_name(registry)
    try:
        auth = dockerlib.module().auth
        with warnings.catch_warnings():  # docker.credentials warns on stderr when a helper is missing
            warnings.simplefilter("ignore")
            if docker_config is not None:
                cfg = auth.load_config(config_dict=copy.deepcopy(docker_config))  # it mutates
            else:
                cfg = auth.load_config()
            found = cfg.resolve_authconfig(name)
    except Exception as exc:  # a broken credential helper: say so, do not leak anything
        raise EnvironmentProblem(f"cannot read credentials for {name} from the Docker config: "
                                 f"{type(exc).__name__}: {exc}") from None
    if not found:
        return None
    norm = {k.lower(): v for k, v in found.items() if v}
    out = {}
    for key in ("username", "password", "identitytoken", "registrytoken"):
        if key in norm:
            out[key] = norm[key]
    return out or None


# -- what the registry answered, by its error code ---------------------------------------------

# The distribution spec's error codes (and distribution's errcode registrations), as dockerd
# renders them in push errors: the code lower-cased, "_" -> " ", then ": <message>".
ERROR_CODES = frozenset({
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID", "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "MANIFEST_UNVERIFIED", "NAME_INVALID", "NAME_UNKNOWN",
    "SIZE_INVALID", "TAG_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS", "UNKNOWN",
    "UNAVAILABLE", "PAGINATION_NUMBER_INVALID", "RANGE_INVALID",
})
_RENDERED = {c.lower().replace("_", " "): c for c in ERROR_CODES}
_REFUSED_CODES = frozenset({"UNAUTHORIZED", "DENIED"})
_RATE_LIMITED_CODES = frozenset({"TOOMANYREQUESTS"})
_STATUS_IN_TEXT = re.compile(r"(?:unexpected HTTP status:|\bHTTP) ([1-5][0-9]{2})\b")


def registry_answer(text: str) -> tuple[str | None, int | None]:
    """(error code, HTTP status) of a registry's answer as dockerd relays it in a push error.

    dockerd writes the registry's errors as distribution's ``errcode`` renders them,
    ``<code lower-cased, spaces for _>: <message>`` (one per line after ``errors:`` when
    several), and answers it could not parse as ``received unexpected HTTP status: 429 ...`` or
    ``error parsing HTTP 403 response body: ...``. Either part may be None."""
    code = None
    for line in text.splitlines():
        head, sep, _ = line.strip().partition(":")
        if sep and head.strip().lower() in _RENDERED:
            code = _RENDERED[head.strip().lower()]
            break
    m = _STATUS_IN_TEXT.search(text)
    return code, (int(m.group(1)) if m else None)


def refusal(code: str | None, status: int | None, registry: str, subject: str, detail: str) -> ArchfleetError | None:
    """The error for a registry's answer to ``subject`` (what was asked, e.g. "the push of
    reg/app:1-linux-arm64"), by its error code or HTTP status, or None when neither is known:

    - ``UNAUTHORIZED``/``DENIED``, 401/403: :class:`RegistryRefused` with the ``docker login`` hint;
    - ``TOOMANYREQUESTS``, 429: :class:`RegistryRefused` (a rate limit or quota: wait, or log in);
    - any other code or 4xx/5xx status: :class:`RegistryError`.
    None of these is the node's fault: every node pushes to the same registry."""
    if code in _REFUSED_CODES or (code is None and status in (401, 403)):
        return RegistryRefused(f"registry {credential_name(registry)} refused {subject}: {detail}; run "
                               f"{login_hint(registry)} with an account that may do that", status)
    if code in _RATE_LIMITED_CODES or (code is None and status == 429):
        return RegistryRefused(f"registry {credential_name(registry)} refused {subject}: rate limit or quota "
                               f"({detail}); wait and run again, or log in ({login_hint(registry)}) for a "
                               "higher limit", status)
    if code is not None or (status is not None and status >= 400):
        return RegistryError(f"registry {credential_name(registry)} rejected {subject}: {detail}", status)
    return None


# -- TLS ------------------------------------------------------------------------------------------

def certs_dir() -> Path:
    """Where per-registry CAs and client certificates are looked for: ``$ARCHFLEET_CERTS_D``, else ``/etc/docker/certs.d`` (as dockerd)."""
    return Path(os.environ.get("ARCHFLEET_CERTS_D") or "/etc/docker/certs.d")


def tls_context_for(host: str) -> ssl.SSLContext | None:
    """An SSL context that also trusts ``host``'s certs.d CAs (and presents its client
    certificate), or None when the host has no certs.d directory."""
    d = certs_dir() / host
    if not d.is_dir():
        return None
    ctx = trust_roots()
    try:
        for ca in sorted(d.glob("*.crt")):
            ctx.load_verify_locations(cafile=str(ca))
        for cert in sorted(d.glob("*.cert")):
            ctx.load_cert_chain(str(cert), str(cert.with_suffix(".key")))
    except (OSError, ssl.SSLError) as exc:
        raise EnvironmentProblem(f"{d}: cannot use its certificates ({exc}); fix or remove them") from None
    return ctx


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` behind an httpx transport error, if TLS is what failed (by type:
    ``ssl.SSLCertVerificationError`` means the certificate, any other the handshake itself)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text.split("] ", 1)[-1].split(" (_ssl")[0] if "]" in text else text


def _hostname(netloc: str) -> str:
    """``host`` of ``host[:port]`` / ``[v6]:port``."""
    if netloc.startswith("["):
        return netloc[1:].split("]", 1)[0]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def _retry_after(resp: httpx.Response) -> float | None:
    """Seconds the registry asks us to wait (``Retry-After``: seconds or an HTTP date), or None."""
    value = resp.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _system_store() -> bool:
    """Whether this machine has a CA store OpenSSL will use: its default CA file, or a CA
    directory holding certificates under their hash names (``c_rehash``: ``1234abcd.0``). An
    existing but empty ``/etc/ssl/certs`` (openssl installed, ca-certificates not) is none."""
    paths = ssl.get_default_verify_paths()
    if paths.cafile and os.path.isfile(paths.cafile):
        return True
    if paths.capath and os.path.isdir(paths.capath):
        try:
            return any(re.fullmatch(r"[0-9a-f]{8}\.\d+", name) for name in os.listdir(paths.capath))
        except OSError:
            return False
    return False


def trust_roots() -> ssl.SSLContext:
    """A new TLS client context trusting what dockerd trusts: the system's CA store (OpenSSL's
    default paths, ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when set; Go's ``SystemCertPool`` reads the
    same files), so a company CA installed with ``update-ca-certificates`` works for archfleet as
    for ``docker push``. A machine with no CA store (:func:`_system_store`) gets certifi's bundle
    (httpx's default, which alone missed such a CA)."""
    if _system_store():
        return ssl.create_default_context()
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


_tls_lock = threading.Lock()
_tls: "concurrent.futures.Future[ssl.SSLContext] | None" = None


def prepare_tls() -> None:
    """Start making :func:`trust_roots`' context in a thread of its own, once per process, for
    :func:`_system_tls` to take later: loading the CA store takes ~17 ms, which OpenSSL spends
    without the GIL, so a command that calls this first (``build``, ``plan``) pays it beside
    its imports and checks rather than before its first registry request (issue 17).

    The thread is not a daemon: the interpreter waits for it before it exits. A command that
    ended at once (bad input, exit 2) used to exit while the thread was still inside OpenSSL,
    whose own exit handler then freed what the thread was using: a segmentation fault (exit
    139) after the error line, every time once the exit got faster (found by the fresh-user
    helper)."""
    global _tls
    with _tls_lock:
        if _tls is not None:
            return
        _tls = concurrent.futures.Future()
    threading.Thread(target=_make_tls, args=(_tls,), name="archfleet-tls").start()


def _make_tls(result: "concurrent.futures.Future[ssl.SSLContext]") -> None:
    try:
        result.set_result(trust_roots())
    except BaseException as exc:  # said where the context is taken
        result.set_exception(exc)


def _system_tls() -> ssl.SSLContext:
    """:func:`trust_roots`, made once per process (:func:`prepare_tls`); raises what making it
    raised."""
    prepare_tls()
    return _tls.result()


# event loop -> (host, repository, digest) -> the lock held while a blob is written there
# (:meth:`RegistryClient.blob_writer`); per loop, as an asyncio lock belongs to one loop
_WRITING: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = weakref.WeakKeyDictionary()


class RegistryClient:
    """One client for the whole run; reuse it (connections, tokens and credentials are cached).

    ``transport`` serves every host (tests); ``transport_for(verify)`` makes the transport for a
    TLS setting (``verify`` is an ``ssl.SSLContext``, True, or False for an insecure registry
    whose certificate does not verify), for tests of the TLS choices."""

    def __init__(self, insecure: Iterable[str] = (), *, timeout: float = 60.0, docker_config: dict | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 transport_for: Callable[[ssl.SSLContext | bool], httpx.AsyncBaseTransport] | None = None):
        self._insecure = set(insecure)
        self._docker_config = docker_config
        self._timeout = timeout
        self._transport_for = transport_for
        self._custom = transport is not None  # a test's transport serves every host
        self._transport = transport
        # made at the first request (:attr:`_http`): making it loads httpx (~40 ms of CPU), which
        # a build then does while its probe's engine CLIs run, not before they start (issue 17)
        self._shared: httpx.AsyncClient | None = None
        self._per_host: dict[tuple[str, bool], httpx.AsyncClient | None] = {}
        self._unverified: set[str] = set()  # insecure registries whose certificate does not verify
        self._schemes: dict[str, str] = {}
        self._scheme_probes: dict[str, asyncio.Future] = {}  # host -> its scheme's probe (_scheme)
        self._tokens: dict[tuple[str, str], str] = {}  # (host, scope) -> Authorization header
        self._basic: dict[str, str] = {}  # host -> Authorization header (Basic)
        self._creds: dict[str, asyncio.Future] = {}
        # content read by digest, which never changes under it: (host, repository, digest) ->
        # a manifest, or a small blob (a config); see :data:`CACHED_BLOB`
        self._seen: dict[tuple[str, str, str], "Manifest | bytes"] = {}

    async def __aenter__(self) -> "RegistryClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections (also per-host TLS clients)."""
        for probe in self._scheme_probes.values():
            if not probe.done():
                probe.cancel()
                await asyncio.gather(probe, return_exceptions=True)
        if self._shared is not None:
            await self._shared.aclose()
        for client in self._per_host.values():
            if client is not None:
                await client.aclose()

    @property
    def _http(self) -> httpx.AsyncClient:
        """The client every host shares unless it needs TLS settings of its own (the system's
        roots), made at first use."""
        if self._shared is None:
            self._shared = httpx.AsyncClient(timeout=self._timeout, transport=self._transport, follow_redirects=True,
                                             verify=_system_tls() if self._transport is None else True)
        return self._shared

    def _new_client(self, verify: ssl.SSLContext | bool) -> httpx.AsyncClient:
        if self._transport_for is not None:
            return httpx.AsyncClient(timeout=self._timeout, transport=self._transport_for(verify),
                                     follow_redirects=True)
        return httpx.AsyncClient(timeout=self._timeout, verify=_system_tls() if verify is True else verify,
                                 follow_redirects=True)

    def _client(self, url_or_host: str, *, verify: bool | None = None) -> httpx.AsyncClient:
        """The client for a host: the shared one, one trusting the host's certs.d CAs, or (for
        an insecure registry whose certificate does not verify, and a token realm on that same
        host name) one that does not verify."""
        host = httpx.URL(url_or_host).netloc.decode() if "://" in url_or_host else url_or_host
        if self._custom:
            return self._http
        if verify is None:
            verify = _hostname(host) not in {_hostname(h) for h in self._unverified}
        key = (host, verify)
        if key not in self._per_host:
            if not verify:
                self._per_host[key] = self._new_client(False)
            else:
                ctx = tls_context_for(host)
                if ctx is None and self._transport_for is None:
                    self._per_host[key] = None  # the shared client: the system's roots
                else:
                    self._per_host[key] = self._new_client(ctx if ctx is not None else True)
        return self._per_host[key] or self._http

    # -- plumbing -------------------------------------------------------------------------

    def plain_http_allowed(self, host: str) -> bool:
        """May ``host`` (an API host) speak plain HTTP or unverified TLS: loopback, or named
        with ``--insecure-registry`` (as dockerd's ``insecure-registries``)."""
        return is_loopback_host(host) or host in self._insecure

    def scheme_of(self, host: str) -> str | None:
        """``https``, ``https (certificate not verified)`` or ``http`` once ``host`` was used."""
        scheme = self._schemes.get(host)
        if scheme == "https" and host in self._unverified:
            return "https (certificate not verified)"
        return scheme

    async def _credentials(self, host: str) -> dict | None:
        name = credential_name(host)
        if name not in self._creds:
            self._creds[name] = asyncio.ensure_future(asyncio.to_thread(load_credentials, name, self._docker_config))
        return await asyncio.shield(self._creds[name])

    async def _scheme(self, host: str) -> str:
        """How ``host`` is spoken to (``https`` or ``http``), found once per client: requests that
        start together (the bases' resolution, the push-access checks, the known layers) share
        one probe rather than each trying TLS on the port (six handshakes on a plain-HTTP
        loopback registry before a one-platform build, issue 17)."""
        if host in self._schemes:
            return self._schemes[host]
        if not self.plain_http_allowed(host):
            self._schemes[host] = "https"
            return "https"
        probe = self._scheme_probes.get(host)
        if probe is None or (probe.done() and (probe.cancelled() or probe.exception() is not None)):
            probe = self._scheme_probes[host] = asyncio.ensure_future(self._probe_scheme(host))
        return await asyncio.shield(probe)  # one caller cancelled does not stop the others' probe

    async def _probe_scheme(self, host: str) -> str:
        # Like dockerd for insecure registries: HTTPS; if the certificate does not verify, HTTPS
        # without verification; plain HTTP only when the port does not speak TLS at all.
        url = f"https://{host}/v2/"
        scheme = "https"
        try:
            await self._client(host).get(url, timeout=5)
        except httpx.TransportError as exc:
            cause = _ssl_cause(exc)
            if isinstance(cause, ssl.SSLCertVerificationError):
                try:
                    await self._client(host, verify=False).get(url, timeout=5)
                    self._unverified.add(host)
                    log.debug("registry %s: certificate does not verify; insecure registry, not verifying", host)
                except httpx.TransportError:
                    scheme = "http"
            else:  # not TLS (a plain-HTTP port), reset, refused: dockerd's next endpoint is http
                scheme = "http"
        self._schemes[host] = scheme
        return scheme

    def _realm_check(self, host: str, realm: str, creds: dict | None) -> None:
        """Refuse to send credentials where they could be read: only to an HTTPS realm, or a
        plain-HTTP realm on the insecure registry's own host (loopback counts as one host)."""
        url = httpx.URL(realm)
        if url.scheme == "https":
            return
        if url.scheme != "http" or not url.host:
            raise RegistryError(f"registry {credential_name(host)} names a token service that is not an "
                                f"http(s) URL: {realm!r}")
        realm_host, reg_host = url.host, _hostname(host)
        same = realm_host == reg_host or (is_loopback_host(realm_host) and is_loopback_host(reg_host))
        if not self.plain_http_allowed(host):
            raise EnvironmentProblem(
                f"registry {credential_name(host)} names a plain-HTTP token service ({url.scheme}://{url.netloc.decode()}"
                f"{url.path}); archfleet sends nothing to a token service without HTTPS for an HTTPS registry")
        if not same and creds:
            raise EnvironmentProblem(
                f"registry {credential_name(host)} names a token service on another host over plain HTTP "
                f"({url.scheme}://{url.netloc.decode()}{url.path}); archfleet will not send credentials there: "
                "serve the token service over HTTPS")

    async def _token(self, host: str, params: dict[str, str], scope: str) -> str:
        realm = params.get("realm")
        if not realm:
            raise RegistryError(f"registry {credential_name(host)} sent a Bearer challenge without a realm")
        scopes: list[str] = []
        for s in (params.get("scope") or "").split() + scope.split():
            if s not in scopes:
                scopes.append(s)
        creds = await self._credentials(host)
        self._realm_check(host, realm, creds)
        service = params.get("service")
        try:
            if creds and "identitytoken" in creds:
                form = {"grant_type": "refresh_token", "refresh_token": creds["identitytoken"], "client_id": "archfleet"}
                if service:
                    form["service"] = service
                if scopes:
                    form["scope"] = " ".join(scopes)
                resp = await self._client(realm).post(realm, data=form)
            else:
                query = ([("service", service)] if service else []) + [("scope", s) for s in scopes]
                headers = {}
                if creds and "username" in creds:
                    raw = f"{creds['username']}:{creds.get('password', '')}".encode()
                    headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
                resp = await self._client(realm).get(realm, params=query, headers=headers)
        except httpx.TransportError as exc:
            raise RegistryUnreachable(f"token service {realm} for registry {credential_name(host)} unreachable: "
                                     f"{_reason(exc) or type(exc).__name__}") from None
        if resp.status_code in (401, 403):
            raise RegistryRefused(
                f"registry {credential_name(host)} refused the credentials from the Docker config; run {login_hint(host)}"
                if creds else f"registry {credential_name(host)} needs credentials; run {login_hint(host)}",
                resp.status_code)
        if resp.status_code == 429:
            raise RegistryRefused(f"token service {realm} of registry {credential_name(host)} is rate limiting us "
                                  f"(429); wait and run again", 429)
        if resp.status_code != 200:
            raise RegistryError(f"token service {realm} answered {resp.status_code}", resp.status_code)
        try:
            body = resp.json()
        except ValueError:
            raise RegistryError(f"token service {realm} answered something that is not JSON") from None
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(f"token service {realm} returned no token")
        return f"Bearer {token}"

    async def _basic_header(self, host: str) -> str:
        creds = await self._credentials(host)
        if not creds or "username" not in creds:
            raise RegistryRefused(f"registry {credential_name(host)} needs credentials; run {login_hint(host)}", 401)
        raw = f"{creds['username']}:{creds.get('password', '')}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    async def request(self, method: str, host: str, path: str, *, scope: str = "", headers: dict | None = None,
                      content: bytes | AsyncIterator[bytes] | None = None, ok: tuple[int, ...] = (200,), repeatable: bool | None = None,
                      stream: bool = False) -> httpx.Response:
        """Send with auth, retries and back-off; return the response if its status is in ``ok``.

        ``host`` is the API host (``Reference.api_host``); ``scope`` one or more token scopes
        (space-separated). ``repeatable`` says the request may be sent again after it may have
        reached the registry (default: GET/HEAD/DELETE); one that is not raises
        :class:`_Unfinished` instead of being re-sent. ``content`` may be an async iterator of
        bytes (sent as it comes, chunked): such a body can be sent once only, so whatever would
        send it again (a retry, a first 401's token) raises :class:`_Unfinished` instead (the
        token is fetched first: the caller's next try has it). With ``stream`` the body is not
        read: the caller closes the response (``await resp.aclose()``)."""
        if repeatable is None:
            repeatable = method in _SAFE_METHODS
        once = content is not None and not isinstance(content, (bytes, bytearray))
        scheme = await self._scheme(host)
        url = f"{scheme}://{host}{path}"
        hdrs = dict(headers or {})
        authed_once = False
        delay = BACKOFF
        attempt = 0
        while True:
            auth = self._tokens.get((host, scope)) or self._basic.get(host)
            if auth:
                hdrs["Authorization"] = auth
            client = self._client(host)
            try:
                resp = await client.send(client.build_request(method, url, headers=hdrs, content=content), stream=True)
            except httpx.TransportError as exc:  # refused, reset, timed out
                connect = isinstance(exc, _not_sent())
                cause = _ssl_cause(exc)
                if scheme == "https" and isinstance(cause, ssl.SSLCertVerificationError):
                    raise EnvironmentProblem(
                        f"registry {host}'s certificate is not trusted ({_reason(cause)}); if it has its own CA, "
                        f"put the CA certificate in {certs_dir() / host / 'ca.crt'} (as for dockerd)") from None
                if scheme == "https" and cause is not None and not self.plain_http_allowed(host):
                    raise EnvironmentProblem(
                        f"registry {host} does not speak HTTPS ({_reason(cause)}); if it is a plain-HTTP registry "
                        f"you trust, allow it with --insecure-registry {host}") from None
                if (not connect and not repeatable) or once:
                    raise _Unfinished(f"{method} {url} failed after it may have reached the registry: "
                                      f"{str(exc) or type(exc).__name__}") from None
                attempt += 1
                if attempt >= RETRIES:
                    reason = str(exc) or type(exc).__name__
                    if connect:
                        raise RegistryUnreachable(f"registry {host} unreachable ({scheme}): {reason}") from None
                    raise RegistryError(f"{method} {url} failed after {RETRIES} tries: {reason}") from None
                await sleep(delay)
                delay *= 2
                continue
            status = resp.status_code
            if status in ok and stream:
                return resp
            await resp.aread()
            await resp.aclose()
            # httpx's response and its stream refer to each other: without this the request and
            # its body (an upload chunk) would stay in memory until the garbage collector runs
            resp.stream = httpx.ByteStream(resp.content)
            if status == 401 and not authed_once:
                authed_once = True
                kind, params = parse_challenge(resp.headers.get("www-authenticate", ""))
                if kind == "bearer":
                    self._tokens[(host, scope)] = await self._token(host, params, scope)
                elif kind == "basic":
                    self._basic[host] = await self._basic_header(host)
                else:
                    raise RegistryError(f"registry {credential_name(host)} asked for unsupported auth {kind!r}", 401)
                if once:
                    raise _Unfinished(f"{method} {url} needed a token; its body cannot be sent again", 401)
                continue
            if status in ok:
                return resp
            if status == 401:
                _, params = parse_challenge(resp.headers.get("www-authenticate", ""))
                creds = await self._credentials(host)
                if params.get("error") == "insufficient_scope" and creds:
                    raise RegistryRefused(
                        f"registry {credential_name(host)} does not let these credentials {_scope_words(scope)}; "
                        f"run {login_hint(host)} with an account that may", 401)
                raise RegistryRefused(
                    f"registry {credential_name(host)} refused the credentials from the Docker config; run "
                    f"{login_hint(host)}" if creds else
                    f"registry {credential_name(host)} needs credentials; run {login_hint(host)}", 401)
            wait = _retry_after(resp)
            not_processed = status == 429 or (status == 503 and wait is not None)
            if status == 429 or status >= 500:
                if not (repeatable or not_processed) or once:
                    raise _Unfinished(_describe_error(method, url, resp), status)
                attempt += 1
                if wait is not None and wait > RETRY_AFTER_CAP:
                    raise refusal(None, status, host, _subject(method, path),
                                  f"{status}, asks to retry after {wait:.0f} s, longer than archfleet waits "
                                  f"({RETRY_AFTER_CAP:.0f} s)")
                if attempt < RETRIES:
                    await sleep(max(delay, wait or 0.0))
                    delay *= 2
                    continue
            code = _error_code(resp)
            if status in (403, 429) or code in _REFUSED_CODES | _RATE_LIMITED_CODES:
                raise refusal(code, status, host, _subject(method, path), _error_detail(resp) or str(status))
            raise RegistryError(_describe_error(method, url, resp), status, _error_codes(resp))

    # -- API ------------------------------------------------------------------------------

    async def check_access(self, ref: Reference, push: bool = True) -> None:
        """Fail early when the registry is unreachable (:class:`EnvironmentProblem`) or refuses
        us (:class:`RegistryRefused`). With ``push``, also start an upload in ``ref``'s
        repository (and cancel it): a registry lets anyone read ``/v2/`` with an anonymous
        token, so only an upload shows that the credentials may push there."""
        scope = f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"
        try:
            resp = await self.request("GET", ref.api_host, "/v2/", scope=scope, ok=(200, 404))
        except RegistryError as exc:
            raise EnvironmentProblem(f"registry {ref.registry} is not a usable registry: {exc}") from None
        if resp.status_code == 404:
            raise EnvironmentProblem(f"{ref.registry} does not serve the registry API (/v2/ answered 404)")
        if not push:
            return
        try:
            start = await self.request("POST", ref.api_host, f"/v2/{ref.repository}/blobs/uploads/", scope=scope,
                                       ok=(202,), repeatable=True)
        except RegistryRefused:
            raise
        except RegistryError as exc:
            raise EnvironmentProblem(f"registry {ref.registry} does not accept pushes to {ref.name}: {exc}") from None
        location = start.headers.get("location")
        if location:
            try:
                await self.request("DELETE", ref.api_host, _path_of(location), scope=scope,
                                   ok=(200, 202, 204, 404, 405))
            except ArchfleetError:
                pass  # an abandoned upload session: the registry expires it

    async def head_manifest(self, ref: Reference) -> tuple[str, str, int] | None:
        """(digest, media type, size) of the manifest ``ref`` points at, or None if missing."""
        resp = await self.request(
            "HEAD", ref.api_host, f"/v2/{ref.repository}/manifests/{ref.reference}",
            scope=f"repository:{ref.repository}:pull", headers={"Accept": mediatypes.ACCEPT}, ok=(200, 404),
        )
        if resp.status_code == 404:
            return None
        return (resp.headers.get("docker-content-digest", ""), _media_type(resp.headers.get("content-type", "")),
                int(resp.headers.get("content-length", "0")))

    async def get_manifest(self, ref: Reference) -> Manifest:
        """The manifest ``ref`` points at, exactly as served, checked against its digest (``ref``'s
        and ``Docker-Content-Digest``). Raises :class:`RegistryError` (404: not found; not JSON; a
        digest mismatch).

        A manifest read is kept by its digest for the client's life (content under a digest never
        changes), so one command reads it once: the reuse strategy's look-up, verification and
        the merge share what they read."""
        if ref.digest:
            seen = self._seen.get((ref.api_host, ref.repository, ref.digest))
            if isinstance(seen, Manifest):
                return seen
        resp = await self.request(
            "GET", ref.api_host, f"/v2/{ref.repository}/manifests/{ref.reference}",
            scope=f"repository:{ref.repository}:pull", headers={"Accept": mediatypes.ACCEPT}, ok=(200, 404),
        )
        if resp.status_code == 404:
            raise RegistryError(f"{ref} not found in the registry", 404)
        body = resp.content
        digest = sha256_digest(body)
        if ref.digest and digest != ref.digest:
            raise RegistryError(f"{ref}: registry served content with digest {digest}")
        served = resp.headers.get("docker-content-digest")
        if served and served != digest:
            raise RegistryError(f"{ref}: Docker-Content-Digest {served} does not match the body ({digest})")
        media_type = _media_type(resp.headers.get("content-type", ""))
        try:
            media_type = json.loads(body).get("mediaType") or media_type
        except ValueError:
            raise RegistryError(f"{ref}: manifest is not JSON") from None
        manifest = Manifest(body, media_type, digest)
        self._seen[(ref.api_host, ref.repository, digest)] = manifest
        return manifest

    async def get_blob(self, ref: Reference, digest: str) -> bytes:
        """A (small) blob's bytes, checked against its digest. For a layer that may be large,
        :meth:`copy_blob` streams instead. A blob up to :data:`CACHED_BLOB` bytes (a config) is
        kept by its digest for the client's life, like a manifest."""
        seen = self._seen.get((ref.api_host, ref.repository, digest))
        if isinstance(seen, bytes):
            return seen
        resp = await self.request(
            "GET", ref.api_host, f"/v2/{ref.repository}/blobs/{digest}", scope=f"repository:{ref.repository}:pull"
        )
        if sha256_digest(resp.content) != digest:
            raise RegistryError(f"blob {digest} in {ref.name} does not match its digest")
        if len(resp.content) <= CACHED_BLOB:
            self._seen[(ref.api_host, ref.repository, digest)] = resp.content
        return resp.content

    async def blob_exists(self, ref: Reference, digest: str) -> bool:
        """True when the repository of ``ref`` has blob ``digest`` (HEAD)."""
        resp = await self.request(
            "HEAD", ref.api_host, f"/v2/{ref.repository}/blobs/{digest}",
            scope=f"repository:{ref.repository}:pull", ok=(200, 404),
        )
        return resp.status_code == 200

    async def copy_blob(self, src: Reference, dst: Reference, digest: str) -> None:
        """Make blob ``digest`` of ``src`` exist in ``dst``: a cross-repository mount where both
        are on one registry, else a streamed copy (:data:`CHUNK` bytes at a time). An upload cut
        off part-way is not re-sent to the same session: the blob is looked for (HEAD) and the
        upload started again in a new session, up to :data:`RETRIES` times."""

        async def source():
            resp = await self.request("GET", src.api_host, f"/v2/{src.repository}/blobs/{digest}",
                                      scope=f"repository:{src.repository}:pull", stream=True)
            try:
                async for piece in resp.aiter_bytes():
                    yield piece
            except httpx.TransportError as exc:
                raise _Unfinished(f"reading blob {digest} from {src.name} failed: "
                                  f"{str(exc) or type(exc).__name__}") from None
            finally:
                await resp.aclose()

        await self.push_blob(dst, digest, source, mount_from=(src,), where=f"in {src.name}")

    async def mount_blob(self, src: Reference, dst: Reference, digest: str) -> bool:
        """Ask the registry to mount blob ``digest`` of ``src``'s repository into ``dst``'s (the
        distribution spec's cross-repository mount; both on one registry). True when it did
        (201); False when it opened an upload session instead (202: it cannot, or may not,
        mount), which is cancelled."""
        session = await self._mount(src, dst, digest)
        if session is None:
            return True
        await self._cancel(dst, session, f"repository:{dst.repository}:pull,push")
        return False

    async def _mount(self, src: Reference, dst: Reference, digest: str) -> str | None:
        """A mount request: None when mounted, else the upload session the registry opened."""
        scope = f"repository:{dst.repository}:pull,push repository:{src.repository}:pull"
        resp = await self.request(
            "POST", dst.api_host, f"/v2/{dst.repository}/blobs/uploads/?mount={digest}&from={src.repository}",
            scope=scope, ok=(201, 202), repeatable=True,
        )
        if resp.status_code == 201:
            return None
        if not resp.headers.get("location"):
            raise RegistryError(f"registry {credential_name(dst.api_host)} started an upload without a Location")
        return _path_of(resp.headers["location"])

    def blob_writer(self, dst: Reference, digest: str) -> asyncio.Lock:
        """The lock to hold while making blob ``digest`` exist in ``dst``'s repository, so this
        process writes one blob into one repository once at a time, whichever client asks (each
        platform's build has a client of its own): children of one build share layers, and
        distribution's filesystem driver rewrites a repository's blob link file in place
        (truncate, then write) on every upload or mount of it, so a sibling's manifest PUT that
        reads the link meanwhile is refused (400 DIGEST_INVALID + MANIFEST_BLOB_UNKNOWN). The
        second writer waits, then finds the blob there (HEAD) and sends nothing."""
        loop = asyncio.get_running_loop()
        locks = _WRITING.setdefault(loop, {})
        return locks.setdefault((dst.api_host, dst.repository, digest), asyncio.Lock())

    async def push_blob(self, dst: Reference, digest: str, source: Callable[[], AsyncIterator[bytes]], *,
                        mount_from: Sequence[Reference] = (), where: str = "") -> str:
        """Make blob ``digest`` exist in ``dst``, one writer at a time (:meth:`blob_writer`);
        see :meth:`_push_blob`."""
        async with self.blob_writer(dst, digest):
            return await self._push_blob(dst, digest, source, mount_from=mount_from, where=where)

    async def _push_blob(self, dst: Reference, digest: str, source: Callable[[], AsyncIterator[bytes]], *,
                         mount_from: Sequence[Reference] = (), where: str = "") -> str:
        """Make blob ``digest`` exist in ``dst``'s repository, sending its bytes only when the
        registry has it nowhere we can name. In order: HEAD in ``dst`` (there: ``"skipped"``); a
        cross-repository mount from each of ``mount_from`` on the same registry (``"mounted"``);
        else an upload (``"uploaded"``) of what ``source()`` yields (a new async iterator of
        byte pieces each time it is called), re-cut into :data:`CHUNK`-byte PATCHes and checked
        against ``digest`` before the final PUT, so at most one chunk is held in memory. An
        upload cut off part-way is not re-sent to the same session: the blob is looked for and
        the upload started again, from a new ``source()``, up to :data:`RETRIES` times.

        Raises :class:`RegistryError` when the bytes do not match ``digest`` (``where`` names
        their origin in the message) or the upload keeps failing."""
        if await self.blob_exists(dst, digest):
            return "skipped"
        session = None
        for src in mount_from:
            if src.api_host != dst.api_host or src.repository == dst.repository:
                continue
            if session is not None:
                await self._cancel(dst, session, f"repository:{dst.repository}:pull,push")
            session = await self._mount(src, dst, digest)
            if session is None:
                return "mounted"
        last: Exception | None = None
        for _ in range(RETRIES):
            try:
                await self._upload(dst, digest, session, source(), where)
                return "uploaded"
            except _Unfinished as exc:
                last = exc
                session = None
                if await self.blob_exists(dst, digest):
                    return "uploaded"  # the cut-off request did arrive
        raise RegistryError(f"copying blob {digest} to {dst.name} failed {RETRIES} times: {last}")

    async def push_growing(self, dst: Reference, source: Callable[[], AsyncIterator[bytes]],
                           ended: Callable[[], Awaitable[str | None]], *, where: str = "") -> str:
        """Upload a blob while its bytes are still being made (a layer compressed as the
        engine's export is read), its digest known only at their end: ``source()`` yields the
        bytes as they come (a new iterator from the first byte each time it is called), then
        ``await ended()`` says the digest, or None when the blob is not wanted after all (the
        layer turned out to be one the registry holds already). The bytes go in one stream
        PATCH as they arrive (:meth:`_upload_growing`); the final PUT is made as one writer
        (:meth:`blob_writer`) and only when the registry does not hold the blob already (HEAD;
        the session is cancelled then). A cut-off upload is started again, like
        :meth:`push_blob`'s. Returns ``"uploaded"``, ``"skipped"`` (there already) or
        ``"cancelled"`` (not wanted: the session is cancelled, nothing is linked).

        Raises :class:`RegistryError` when the bytes do not match the digest or the upload keeps
        failing."""
        last: Exception | None = None
        for _ in range(RETRIES):
            try:
                push = f"repository:{dst.repository}:pull,push"
                return await self._upload_growing(dst, ended, await self._session(dst, push), source(), push, where)
            except _Unfinished as exc:
                last = exc
                digest = await ended()
                if digest is None:
                    return "cancelled"
                if await self.blob_exists(dst, digest):
                    return "uploaded"  # the cut-off request did arrive
        raise RegistryError(f"copying blob {where or 'a layer'} to {dst.name} failed {RETRIES} times: {last}")

    async def _session(self, dst: Reference, push: str) -> str:
        """A new upload session in ``dst``'s repository (POST): its location's path."""
        start = await self.request("POST", dst.api_host, f"/v2/{dst.repository}/blobs/uploads/", scope=push,
                                   ok=(202,), repeatable=True)
        if not start.headers.get("location"):
            raise RegistryError(f"registry {credential_name(dst.api_host)} started an upload without a Location")
        return _path_of(start.headers["location"])

    async def _upload(self, dst: Reference, digest: str, session: str | None, pieces: AsyncIterator[bytes],
                      where: str) -> None:
        """One upload of ``pieces`` into ``dst`` as blob ``digest`` (raises :class:`_Unfinished`
        when it was cut off and may be started again)."""
        push = f"repository:{dst.repository}:pull,push"
        if session is None:
            session = await self._session(dst, push)
        hasher = hashlib.sha256()
        pending: list[bytes] = []
        held = 0
        sent = 0
        try:
            async for piece in pieces:
                pending.append(piece)
                held += len(piece)
                while held >= CHUNK:
                    data = b"".join(pending) if len(pending) > 1 else pending[0]
                    chunk, rest = (data[:CHUNK], data[CHUNK:]) if len(data) > CHUNK else (data, b"")
                    del data
                    pending, held = ([rest] if rest else []), len(rest)
                    hasher.update(chunk)
                    session = await self._patch(dst, session, chunk, sent, push)
                    sent += len(chunk)
                    del chunk
        finally:
            closing = getattr(pieces, "aclose", None)
            if closing is not None:
                await closing()
        last = b"".join(pending)
        hasher.update(last)
        await self._finish(dst, digest, session, "sha256:" + hasher.hexdigest(), last, push, where)

    async def _upload_growing(self, dst: Reference, digest: Callable[[], Awaitable[str | None]], session: str,
                              pieces: AsyncIterator[bytes], push: str, where: str) -> str:
        """One upload (into ``session``) of a blob still being made: its bytes in one PATCH as
        they come (a stream upload, no ``Content-Range``: what Docker's own push sends, so every
        registry ``docker push`` works with takes it), then the final PUT once ``digest()`` says it,
        under :meth:`blob_writer` after a HEAD. Chunks of a fixed size would wait for each
        PATCH's answer before the next, and the bytes made meanwhile would be sent after the
        last one is made. The maker hashed the bytes as it wrote them; the registry checks them
        against the digest."""
        try:
            resp = await self.request("PATCH", dst.api_host, session, scope=push, content=pieces, ok=(202, 204),
                                      repeatable=False, headers={"Content-Type": "application/octet-stream"})
        finally:
            closing = getattr(pieces, "aclose", None)
            if closing is not None:
                await closing()
        location = resp.headers.get("location")
        session = _path_of(location) if location else session
        digest = await digest()
        if digest is None:
            await self._cancel(dst, session, push)
            return "cancelled"
        async with self.blob_writer(dst, digest):
            if await self.blob_exists(dst, digest):
                await self._cancel(dst, session, push)
                return "skipped"
            await self._finish(dst, digest, session, None, b"", push, where)
        return "uploaded"

    async def _finish(self, dst: Reference, digest: str, session: str, sent: str | None, last: bytes, push: str,
                      where: str) -> None:
        """The final PUT of an upload whose bytes hashed to ``sent`` (``sha256:<hex>``; None: not
        hashed here): refused here, the session cancelled, when that is not ``digest``."""
        if sent is not None and sent != digest:
            await self._cancel(dst, session, push)
            raise RegistryError(f"blob {digest}{' ' + where if where else ''} does not match its digest")
        sep = "&" if "?" in session else "?"
        await self.request("PUT", dst.api_host, f"{session}{sep}digest={digest}", scope=push, content=last,
                           headers={"Content-Type": "application/octet-stream"}, ok=(201, 204), repeatable=False)

    async def _patch(self, dst: Reference, session: str, chunk: bytes, offset: int, scope: str) -> str:
        """Send one chunk of an upload (distribution spec: PATCH with ``Content-Range``); return
        the session's next location."""
        resp = await self.request(
            "PATCH", dst.api_host, session, scope=scope, content=chunk, ok=(202, 204), repeatable=False,
            headers={"Content-Type": "application/octet-stream",
                     "Content-Range": f"{offset}-{offset + len(chunk) - 1}"},
        )
        location = resp.headers.get("location")
        return _path_of(location) if location else session

    async def _cancel(self, dst: Reference, session: str, scope: str) -> None:
        try:
            await self.request("DELETE", dst.api_host, session, scope=scope, ok=(200, 202, 204, 404, 405))
        except ArchfleetError:
            pass

    async def put_manifest(self, ref: Reference, body: bytes, media_type: str | None = None) -> str:
        """PUT ``body`` under ``ref`` (a tag or its own digest); return its digest. Repeatable:
        the same body under the same name is the same result."""
        if media_type is None:
            media_type = json.loads(body).get("mediaType")
        if not media_type:
            raise RegistryError("refusing to push a manifest without mediaType")
        digest = sha256_digest(body)
        if ref.digest and ref.digest != digest:
            raise RegistryError(f"manifest for {ref} has digest {digest}")
        resp = await self.request(
            "PUT", ref.api_host, f"/v2/{ref.repository}/manifests/{ref.reference}",
            scope=f"repository:{ref.repository}:pull,push", headers={"Content-Type": media_type},
            content=body, ok=(201, 200), repeatable=True,
        )
        served = resp.headers.get("docker-content-digest")
        if served and served != digest:
            raise RegistryError(f"registry stored {ref} as {served}, expected {digest}")
        # the registry holds these bytes under their digest now: read later (verification, the
        # merge), they come from here, as a manifest read once does
        self._seen[(ref.api_host, ref.repository, digest)] = Manifest(body, media_type, digest)
        return digest

    def wrote_blob(self, ref: Reference, digest: str, data: bytes) -> None:
        """``data``, which this client has just put into ``ref``'s repository as blob ``digest``
        (the registry checked it against the digest), is kept as if read (:meth:`get_blob`) when
        up to :data:`CACHED_BLOB` bytes: verification then reads a child's config from here."""
        if len(data) <= CACHED_BLOB and sha256_digest(data) == digest:
            self._seen[(ref.api_host, ref.repository, digest)] = data


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip()


def _path_of(location: str) -> str:
    """Upload locations may be absolute URLs; keep path and query."""
    url = httpx.URL(location)
    return url.raw_path.decode() if url.is_absolute_url else location


def _scope_words(scope: str) -> str:
    """``repository:a/b:pull,push`` -> "push to a/b", for messages."""
    out = []
    for item in scope.split():
        kind, _, rest = item.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind == "repository" and name:
            out.append(("push to " if "push" in actions.split(",") else "pull from ") + name)
    return " and ".join(out) or "do that"


def _subject(method: str, path: str) -> str:
    """"a push to NAME" / "a pull from NAME" for an API path, for messages."""
    name = path[len("/v2/"):] if path.startswith("/v2/") else path
    for part in ("/blobs/", "/manifests/"):
        name = name.split(part, 1)[0]
    name = name.strip("/") or "the registry"
    return f"a push to {name}" if method in ("POST", "PUT", "PATCH", "DELETE") else f"a pull from {name}"


def _error_codes(resp: httpx.Response) -> tuple[str, ...]:
    """Every distribution error code in an error answer's body, in order."""
    try:
        errors = resp.json().get("errors") or []
        return tuple(str(e.get("code", "")).upper() for e in errors if isinstance(e, dict))
    except (ValueError, AttributeError):
        return ()


def _error_code(resp: httpx.Response) -> str | None:
    """The first distribution error code in an error answer's body that archfleet knows, or None."""
    return next((c for c in _error_codes(resp) if c in ERROR_CODES), None)


def _error_detail(resp: httpx.Response) -> str:
    try:
        errors = resp.json().get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, AttributeError):
        return resp.text[:200].strip()


def _describe_error(method: str, url: str, resp: httpx.Response) -> str:
    detail = _error_detail(resp)
    return f"{method} {url} answered {resp.status_code}" + (f" ({detail})" if detail else "")
