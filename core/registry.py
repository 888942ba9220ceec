"""An async OCI distribution client: manifests and blobs, with Docker's credentials.

Credentials come from the Docker config through ``docker.auth`` (``auths``, ``credsStore``,
``credHelpers``). Auth follows the registry's ``WWW-Authenticate`` challenge: Basic, or the
Bearer token flow (realm/service/scope). Plain HTTP is used only for loopback registries and
the ones named with ``--insecure-registry``. A registry with its own CA is trusted the way
dockerd trusts it: ``/etc/docker/certs.d/<host[:port]>/*.crt`` are extra CA roots and
``*.cert``/``*.key`` pairs client certificates (``$ARCHFLEET_CERTS_D`` names another directory).
Digests are computed over the exact bytes sent or received. 5xx answers and dropped
connections are retried with back-off.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import logging
import os
import re
import ssl
from pathlib import Path
from typing import Iterable

import attrs
import docker.auth  # at import time: importing it from two threads at once races
import httpx

from . import mediatypes
from .errors import EnvironmentProblem, RegistryError
from .reference import Reference, is_loopback_host

log = logging.getLogger(__name__)

RETRIES = 4
BACKOFF = 0.25  # seconds, doubled each retry


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@attrs.frozen
class Manifest:
    """A manifest or index exactly as the registry served it."""

    body: bytes
    media_type: str
    digest: str

    def json(self) -> dict:
        return json.loads(self.body)


_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


def load_credentials(registry: str, docker_config: dict | None = None) -> dict[str, str] | None:
    """Username/password or identity token for ``registry`` from the Docker config, or None."""
    try:
        if docker_config is not None:
            cfg = docker.auth.load_config(config_dict=copy.deepcopy(docker_config))  # it mutates
        else:
            cfg = docker.auth.load_config()
        found = cfg.resolve_authconfig(registry)
    except Exception as exc:  # a broken credential helper: say so, do not leak anything
        raise EnvironmentProblem(f"cannot read credentials for {registry}: {type(exc).__name__}: {exc}") from None
    if not found:
        return None
    norm = {k.lower(): v for k, v in found.items() if v}
    out = {}
    for key in ("username", "password", "identitytoken", "registrytoken"):
        if key in norm:
            out[key] = norm[key]
    return out or None


def certs_dir() -> Path:
    return Path(os.environ.get("ARCHFLEET_CERTS_D") or "/etc/docker/certs.d")


def tls_context_for(host: str) -> ssl.SSLContext | None:
    """An SSL context that also trusts ``host``'s certs.d CAs (and presents its client
    certificate), or None when the host has no certs.d directory."""
    d = certs_dir() / host
    if not d.is_dir():
        return None
    import certifi

    ctx = ssl.create_default_context(cafile=certifi.where())
    try:
        for ca in sorted(d.glob("*.crt")):
            ctx.load_verify_locations(cafile=str(ca))
        for cert in sorted(d.glob("*.cert")):
            ctx.load_cert_chain(str(cert), str(cert.with_suffix(".key")))
    except (OSError, ssl.SSLError) as exc:
        raise EnvironmentProblem(f"{d}: cannot use its certificates ({exc}); fix or remove them") from None
    return ctx


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text.split("] ", 1)[-1].split(" (_ssl")[0] if "]" in text else text


class RegistryClient:
    """One client for the whole run; reuse it (connections and tokens are cached)."""

    def __init__(self, insecure: Iterable[str] = (), *, timeout: float = 60.0, docker_config: dict | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):
        self._insecure = set(insecure)
        self._docker_config = docker_config
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=True)
        self._timeout = timeout
        self._custom = transport is not None  # a test's transport serves every host
        self._per_host: dict[str, httpx.AsyncClient | None] = {}  # hosts with a certs.d directory
        self._schemes: dict[str, str] = {}
        self._tokens: dict[tuple[str, str], str] = {}  # (host, scope) -> Authorization header
        self._basic: dict[str, str] = {}  # host -> Authorization header (Basic)
        self._creds: dict[str, dict | None] = {}

    async def __aenter__(self) -> "RegistryClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        for client in self._per_host.values():
            if client is not None:
                await client.aclose()

    def _client(self, url_or_host: str) -> httpx.AsyncClient:
        """The client for a host: the shared one, or one trusting the host's certs.d CAs."""
        host = httpx.URL(url_or_host).netloc.decode() if "://" in url_or_host else url_or_host
        if self._custom:
            return self._http
        if host not in self._per_host:
            ctx = tls_context_for(host)
            self._per_host[host] = None if ctx is None else httpx.AsyncClient(
                timeout=self._timeout, verify=ctx, follow_redirects=True)
        return self._per_host[host] or self._http

    # -- plumbing -------------------------------------------------------------------------

    def plain_http_allowed(self, host: str) -> bool:
        return is_loopback_host(host) or host in self._insecure

    def _credentials(self, host: str) -> dict | None:
        if host not in self._creds:
            self._creds[host] = load_credentials(host, self._docker_config)
        return self._creds[host]

    async def _scheme(self, host: str) -> str:
        if host in self._schemes:
            return self._schemes[host]
        if not self.plain_http_allowed(host):
            self._schemes[host] = "https"
            return "https"
        # Like dockerd for insecure registries: HTTPS first, plain HTTP if TLS fails.
        try:
            await self._client(host).get(f"https://{host}/v2/", timeout=5)
            scheme = "https"
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectTimeout):
            scheme = "http"
        self._schemes[host] = scheme
        return scheme

    async def _token(self, host: str, params: dict[str, str], scope: str) -> str:
        realm = params.get("realm")
        if not realm:
            raise RegistryError(f"registry {host} sent a Bearer challenge without a realm")
        query = {k: v for k, v in (("service", params.get("service")), ("scope", scope)) if v}
        creds = self._credentials(host)
        auth = None
        try:
            if creds and "identitytoken" in creds:
                resp = await self._client(realm).post(
                    realm,
                    data={"grant_type": "refresh_token", "refresh_token": creds["identitytoken"],
                          "client_id": "archfleet", **query},
                )
            else:
                if creds and "username" in creds:
                    auth = (creds["username"], creds.get("password", ""))
                resp = await self._client(realm).get(realm, params=query, auth=auth)
        except httpx.TransportError as exc:
            raise EnvironmentProblem(f"token service {realm} for registry {host} unreachable: {exc}") from None
        if resp.status_code in (401, 403):
            raise EnvironmentProblem(
                f"registry {host} refused the credentials from the Docker config; run `docker login {host}`"
                if creds else f"registry {host} needs credentials; run `docker login {host}`"
            )
        if resp.status_code != 200:
            raise RegistryError(f"token service {realm} answered {resp.status_code}", resp.status_code)
        body = resp.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(f"token service {realm} returned no token")
        return f"Bearer {token}"

    def _basic_header(self, host: str) -> str:
        creds = self._credentials(host)
        if not creds or "username" not in creds:
            raise EnvironmentProblem(f"registry {host} needs credentials; run `docker login {host}`")
        raw = f"{creds['username']}:{creds.get('password', '')}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    async def request(self, method: str, host: str, path: str, *, scope: str = "", headers: dict | None = None,
                      content: bytes | None = None, ok: tuple[int, ...] = (200,)) -> httpx.Response:
        """Send with auth, retries and back-off; return the response if its status is in ``ok``."""
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
            try:
                resp = await self._client(host).request(method, url, headers=hdrs, content=content)
            except httpx.TransportError as exc:  # refused, reset, timed out: retried with back-off
                connect = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                if connect and scheme == "https" and "CERTIFICATE_VERIFY_FAILED" in str(exc):
                    raise EnvironmentProblem(
                        f"registry {host}'s certificate is not trusted ({_reason(exc)}); if it has its own CA, "
                        f"put the CA certificate in {certs_dir() / host / 'ca.crt'} (as for dockerd)") from None
                if connect and scheme == "https" and ("SSL" in str(exc) or "WRONG_VERSION" in str(exc)):
                    raise EnvironmentProblem(
                        f"registry {host} does not speak HTTPS; if it is a plain-HTTP registry you trust, "
                        f"allow it with --insecure-registry {host}") from None
                attempt += 1
                if attempt >= RETRIES:
                    reason = str(exc) or type(exc).__name__
                    if connect:
                        raise EnvironmentProblem(f"registry {host} unreachable ({scheme}): {reason}") from None
                    raise RegistryError(f"{method} {url} failed after {RETRIES} tries: {reason}") from None
                await asyncio.sleep(delay)
                delay *= 2
                continue
            if resp.status_code == 401 and not authed_once:
                authed_once = True
                kind, params = parse_challenge(resp.headers.get("www-authenticate", ""))
                if kind == "bearer":
                    self._tokens[(host, scope)] = await self._token(host, params, params.get("scope") or scope)
                elif kind == "basic":
                    self._basic[host] = self._basic_header(host)
                else:
                    raise RegistryError(f"registry {host} asked for unsupported auth {kind!r}", 401)
                continue
            if resp.status_code == 401:
                raise EnvironmentProblem(
                    f"registry {host} refused the credentials from the Docker config; run `docker login {host}`"
                )
            if resp.status_code >= 500 or resp.status_code == 429:
                attempt += 1
                if attempt < RETRIES:
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
            if resp.status_code not in ok:
                raise RegistryError(_describe_error(method, url, resp), resp.status_code)
            return resp

    # -- API ------------------------------------------------------------------------------

    async def check_access(self, ref: Reference, push: bool = True) -> None:
        """Fail early (EnvironmentProblem) when the registry is unreachable or refuses us."""
        scope = f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"
        try:
            resp = await self.request("GET", ref.api_host, "/v2/", scope=scope, ok=(200, 404))
        except RegistryError as exc:
            raise EnvironmentProblem(f"registry {ref.registry} is not a usable registry: {exc}") from None
        if resp.status_code == 404:
            raise EnvironmentProblem(f"{ref.registry} does not serve the registry API (/v2/ answered 404)")

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
        return Manifest(body, media_type, digest)

    async def get_blob(self, ref: Reference, digest: str) -> bytes:
        resp = await self.request(
            "GET", ref.api_host, f"/v2/{ref.repository}/blobs/{digest}", scope=f"repository:{ref.repository}:pull"
        )
        if sha256_digest(resp.content) != digest:
            raise RegistryError(f"blob {digest} in {ref.name} does not match its digest")
        return resp.content

    async def blob_exists(self, ref: Reference, digest: str) -> bool:
        resp = await self.request(
            "HEAD", ref.api_host, f"/v2/{ref.repository}/blobs/{digest}",
            scope=f"repository:{ref.repository}:pull", ok=(200, 404),
        )
        return resp.status_code == 200

    async def copy_blob(self, src: Reference, dst: Reference, digest: str) -> None:
        """Make blob ``digest`` of ``src`` exist in ``dst``: cross-repo mount, else stream a copy."""
        if await self.blob_exists(dst, digest):
            return
        scope = f"repository:{dst.repository}:pull,push"
        if src.api_host == dst.api_host:
            resp = await self.request(
                "POST", dst.api_host, f"/v2/{dst.repository}/blobs/uploads/?mount={digest}&from={src.repository}",
                scope=scope, ok=(201, 202),
            )
            if resp.status_code == 201:
                return
            await self.request("DELETE", dst.api_host, _path_of(resp.headers["location"]), scope=scope, ok=(204, 200, 404))
        data = await self.get_blob(src, digest)
        start = await self.request("POST", dst.api_host, f"/v2/{dst.repository}/blobs/uploads/", scope=scope, ok=(202,))
        location = _path_of(start.headers["location"])
        sep = "&" if "?" in location else "?"
        await self.request(
            "PUT", dst.api_host, f"{location}{sep}digest={digest}", scope=scope, content=data,
            headers={"Content-Type": "application/octet-stream"}, ok=(201,),
        )

    async def put_manifest(self, ref: Reference, body: bytes, media_type: str | None = None) -> str:
        """PUT ``body`` under ``ref`` (a tag or its own digest); return its digest."""
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
            content=body, ok=(201, 200),
        )
        served = resp.headers.get("docker-content-digest")
        if served and served != digest:
            raise RegistryError(f"registry stored {ref} as {served}, expected {digest}")
        return digest


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip()


def _path_of(location: str) -> str:
    """Upload locations may be absolute URLs; keep path and query."""
    url = httpx.URL(location)
    return url.raw_path.decode() if url.is_absolute_url else location


def _describe_error(method: str, url: str, resp: httpx.Response) -> str:
    detail = ""
    try:
        errors = resp.json().get("errors") or []
        detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except ValueError:
        detail = resp.text[:200].strip()
    return f"{method} {url} answered {resp.status_code}" + (f" ({detail})" if detail else "")
