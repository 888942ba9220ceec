"""An in-process registry for httpx.MockTransport: the distribution API's manifest and blob
endpoints (monolithic and chunked uploads, cross-repository mounts, DELETE of an upload
session) behind Bearer-token auth that checks every request's scope, plus a token service.
It records every request, and keeps only the digest and size of blobs it is told not to keep
(``keep_blobs=False``), so a test can copy a large blob without the fake holding it."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re

import httpx

_ids = itertools.count(1)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry:
    def __init__(self, host="registry.test", *, users=None, realm=None, service=None, keep_blobs=True,
                 anonymous_pull=False, can_mount=True):
        self.host = host
        self.users = {"alice": "s3cret"} if users is None else users
        self.realm = realm or f"https://{host}/token"
        self.service = service or host
        self.keep_blobs = keep_blobs
        self.anonymous_pull = anonymous_pull
        self.can_mount = can_mount
        self.sessions = 0  # upload sessions opened
        self.requests: list[httpx.Request] = []
        self.token_requests: list[httpx.Request] = []
        self.blobs: dict[tuple[str, str], bytes | int] = {}  # (repo, digest) -> bytes, or size
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}  # (repo, tag or digest)
        self.uploads: dict[str, dict] = {}
        self.events: list[tuple[str, str, str]] = []  # ("blob"|"manifest", repo, reference)
        self.peak_patch = 0
        self.patches = 0
        self.streamed = 0  # PATCHes without Content-Range (stream uploads)
        self.hook = None  # callable(request) -> Response | None, consulted first

    # -- auth ---------------------------------------------------------------------------------

    def token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        auth = request.headers.get("authorization", "")
        user = None
        if auth:
            for name, password in self.users.items():
                if auth == "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode():
                    user = name
            if user is None:
                return httpx.Response(401, json={"details": "incorrect username or password"})
        granted = []
        for scope in request.url.params.get_list("scope"):
            kind, name, actions = scope.split(":")
            allowed = [a for a in actions.split(",") if user or a == "pull"]
            if allowed:
                granted.append(f"{kind}:{name}:{','.join(allowed)}")
        return httpx.Response(200, json={"token": json.dumps({"user": user, "access": granted})})

    def _granted(self, request: httpx.Request) -> list[str]:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return []
        return json.loads(auth[len("Bearer "):])["access"]

    def _allows(self, request, repo, action) -> bool:
        if action == "pull" and self.anonymous_pull:
            return True
        for scope in self._granted(request):
            kind, name, actions = scope.split(":")
            if name == repo and action in actions.split(","):
                return True
        return False

    def _challenge(self, scopes: list[str], error: str | None = None) -> httpx.Response:
        value = f'Bearer realm="{self.realm}",service="{self.service}"'
        if scopes:
            value += f',scope="{" ".join(scopes)}"'
        if error:
            value += f',error="{error}"'
        return httpx.Response(401, headers={"WWW-Authenticate": value},
                              json={"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})

    # -- the API ------------------------------------------------------------------------------

    def __call__(self, request: httpx.Request) -> httpx.Response:
        # kept without its body: a test copying a large blob must not find the fake holding it
        self.requests.append(httpx.Request(request.method, request.url, headers=request.headers))
        if self.hook is not None:
            answer = self.hook(request)
            if answer is not None:
                return answer
        path = request.url.path
        if path == "/token":
            return self.token(request)
        if path == "/v2/":
            return httpx.Response(200) if self._granted(request) or request.headers.get("authorization") \
                else self._challenge([])
        m = re.match(r"^/v2/(.+)/(blobs|manifests)/(.*)$", path)
        if not m:
            return httpx.Response(404)
        repo, kind, rest = m.groups()
        action = "pull" if request.method in ("GET", "HEAD") else "push"
        needed = [(repo, action)]
        mount_from = request.url.params.get("from")
        if kind == "blobs" and request.method == "POST" and request.url.params.get("mount"):
            needed.append((mount_from, "pull"))
        for name, act in needed:
            if not self._allows(request, name, act):
                scopes = [f"repository:{n}:{'pull,push' if a == 'push' else 'pull'}" for n, a in needed]
                if request.headers.get("authorization"):
                    return self._challenge(scopes, "insufficient_scope")
                return self._challenge(scopes)
        if kind == "manifests":
            return self._manifest(request, repo, rest)
        if rest.startswith("uploads"):
            return self._upload(request, repo, rest[len("uploads"):].strip("/"))
        return self._blob(request, repo, rest)

    def _blob(self, request, repo, digest):
        if (repo, digest) not in self.blobs:
            return httpx.Response(404, json={"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]})
        data = self.blobs[(repo, digest)]
        size = data if isinstance(data, int) else len(data)
        if request.method == "HEAD":
            return httpx.Response(200, headers={"Content-Length": str(size), "Docker-Content-Digest": digest})
        if request.method == "GET" and isinstance(data, bytes):
            return httpx.Response(200, content=data)
        return httpx.Response(405)

    def _upload(self, request, repo, uid):
        if request.method == "POST" and not uid:
            mount, source = request.url.params.get("mount"), request.url.params.get("from")
            if mount and self.can_mount and (source, mount) in self.blobs:
                self.blobs[(repo, mount)] = self.blobs[(source, mount)]
                self.events.append(("blob", repo, mount))
                return httpx.Response(201, headers={"Location": f"/v2/{repo}/blobs/{mount}"})
            uid = f"u{next(_ids)}"
            self.sessions += 1
            self.uploads[uid] = {"repo": repo, "hash": hashlib.sha256(), "size": 0,
                                 "data": bytearray() if self.keep_blobs else None}
            return httpx.Response(202, headers={"Location": f"/v2/{repo}/blobs/uploads/{uid}?state=s{uid}",
                                                "Range": "0-0"})
        if uid not in self.uploads:
            return httpx.Response(404, json={"errors": [{"code": "BLOB_UPLOAD_UNKNOWN", "message": "upload unknown"}]})
        up = self.uploads[uid]
        if request.method == "DELETE":
            del self.uploads[uid]
            return httpx.Response(204)
        body = request.content
        if request.method == "PATCH":
            self.patches += 1
            self.peak_patch = max(self.peak_patch, len(body))
            if "content-range" in request.headers:  # a chunk; without: a stream upload (docker push's), as distribution takes it
                start, end = (int(x) for x in request.headers["content-range"].split("-"))
                if start != up["size"] or end != start + len(body) - 1:
                    return httpx.Response(416, json={"errors": [{"code": "RANGE_INVALID", "message": "bad range"}]})
            else:
                self.streamed += 1
        if body:
            up["hash"].update(body)
            up["size"] += len(body)
            if up["data"] is not None:
                up["data"] += body
        if request.method == "PATCH":
            return httpx.Response(202, headers={"Location": f"/v2/{repo}/blobs/uploads/{uid}?state=n{up['size']}",
                                                "Range": f"0-{up['size'] - 1}"})
        if request.method == "PUT":
            digest = request.url.params.get("digest")
            del self.uploads[uid]
            if "sha256:" + up["hash"].hexdigest() != digest:
                return httpx.Response(400, json={"errors": [{"code": "DIGEST_INVALID", "message": "digest mismatch"}]})
            self.blobs[(repo, digest)] = bytes(up["data"]) if up["data"] is not None else up["size"]
            self.events.append(("blob", repo, digest))
            return httpx.Response(201, headers={"Location": f"/v2/{repo}/blobs/{digest}", "Docker-Content-Digest": digest})
        return httpx.Response(405)

    def _manifest(self, request, repo, ref):
        if request.method == "PUT":
            body = request.content
            digest = digest_of(body)
            if ref.startswith("sha256:") and ref != digest:
                return httpx.Response(400, json={"errors": [{"code": "DIGEST_INVALID", "message": "digest"}]})
            doc = json.loads(body)
            for desc in [doc.get("config"), *doc.get("layers", [])]:
                if desc and (repo, desc["digest"]) not in self.blobs:
                    return httpx.Response(400, json={"errors": [{"code": "MANIFEST_BLOB_UNKNOWN",
                                                                 "message": desc["digest"]}]})
            for desc in doc.get("manifests", []):
                if (repo, desc["digest"]) not in self.manifests:
                    return httpx.Response(400, json={"errors": [{"code": "MANIFEST_BLOB_UNKNOWN",
                                                                 "message": desc["digest"]}]})
            mt = request.headers["content-type"]
            self.manifests[(repo, ref)] = self.manifests[(repo, digest)] = (body, mt)
            self.events.append(("manifest", repo, ref))
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        if (repo, ref) not in self.manifests:
            return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})
        body, mt = self.manifests[(repo, ref)]
        headers = {"Content-Type": mt, "Docker-Content-Digest": digest_of(body), "Content-Length": str(len(body))}
        return httpx.Response(200, content=b"" if request.method == "HEAD" else body, headers=headers)

    # -- helpers for tests ----------------------------------------------------------------------

    def add_image(self, repo: str, layers: list[bytes], media_type="application/vnd.oci.image.manifest.v1+json",
                  platform=("linux", "amd64"), *, config: dict | None = None,
                  layer_media_type="application/vnd.oci.image.layer.v1.tar+gzip",
                  declared_sizes: dict[int, int] | None = None) -> str:
        """Store an image (a config naming ``platform`` and ``layers``, bottom first) by digest;
        return its digest. ``config``: the config's ``config`` member (Cmd, Entrypoint, Env);
        ``declared_sizes``: layer index -> the size its descriptor claims (the blob is unchanged)."""
        doc = {"os": platform[0], "architecture": platform[1], "config": config or {}}
        if len(platform) > 2:
            doc["variant"] = platform[2]
        config_blob = json.dumps(doc).encode()
        self.blobs[(repo, digest_of(config_blob))] = config_blob
        descs = []
        for i, layer in enumerate(layers):
            self.blobs[(repo, digest_of(layer))] = layer
            descs.append({"mediaType": layer_media_type, "digest": digest_of(layer),
                          "size": (declared_sizes or {}).get(i, len(layer))})
        config_type = ("application/vnd.docker.container.image.v1+json" if "docker" in media_type
                       else "application/vnd.oci.image.config.v1+json")
        body = json.dumps({"schemaVersion": 2, "mediaType": media_type,
                           "config": {"mediaType": config_type, "digest": digest_of(config_blob),
                                      "size": len(config_blob)},
                           "layers": descs}).encode()
        digest = digest_of(body)
        self.manifests[(repo, digest)] = (body, media_type)
        return digest

    def add_index(self, repo: str, entries: list[dict], media_type="application/vnd.oci.image.index.v1+json") -> str:
        """Store an index over manifests already in ``repo``; ``entries``: {"digest", "platform"
        (os, arch[, variant]) or None, "annotations"}. Returns its digest."""
        manifests = []
        for e in entries:
            body, mt = self.manifests[(repo, e["digest"])]
            desc = {"mediaType": mt, "digest": e["digest"], "size": len(body)}
            if e.get("platform"):
                os_, arch, *variant = e["platform"]
                desc["platform"] = {"os": os_, "architecture": arch, **({"variant": variant[0]} if variant else {})}
            if e.get("annotations"):
                desc["annotations"] = e["annotations"]
            manifests.append(desc)
        body = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}).encode()
        digest = digest_of(body)
        self.manifests[(repo, digest)] = (body, media_type)
        return digest
