"""The registry client against in-process fakes (httpx.MockTransport): auth flows, where
credentials are looked up and where they may be sent, TLS choices for insecure registries,
retries (Retry-After, uploads cut off part-way), streamed blob copies and digests. The real
registry is exercised by the integration tests."""

import asyncio
import base64
import email.utils
import json
import os
import ssl
import stat
import time
import tracemalloc

import httpx
import pytest

from archfleet import mediatypes
from archfleet.errors import EnvironmentProblem, RegistryError, RegistryRefused
from archfleet.reference import parse_reference
from archfleet.registry import RegistryClient, load_credentials, parse_challenge, registry_answer, sha256_digest

from fakeregistry import FakeRegistry, digest_of

HOST = "registry.test"
CONFIG = {"auths": {HOST: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}
HUB_CONFIG = {"auths": {"https://index.docker.io/v1/": {"auth": base64.b64encode(b"alice:s3cret").decode()}}}
ALICE = "Basic " + base64.b64encode(b"alice:s3cret").decode()


def run(coro):
    return asyncio.run(coro)


def client(fake, config=CONFIG, **kw):
    return RegistryClient(transport=httpx.MockTransport(fake), docker_config=config, **kw)


@pytest.fixture
def sleeps(monkeypatch):
    """Every wait the client asks for, in seconds (nothing really waits)."""
    asked: list[float] = []

    async def fake_sleep(seconds):
        asked.append(seconds)

    monkeypatch.setattr("archfleet.registry.sleep", fake_sleep)
    return asked


INDEX = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []}).encode()


# -- auth and credentials ---------------------------------------------------------------------

def test_bearer_flow_with_basic_credentials_and_put_get_round_trip():
    fake = FakeRegistry(HOST)

    async def go():
        async with client(fake) as c:
            ref = parse_reference(f"{HOST}/app:1")
            digest = await c.put_manifest(ref, INDEX)
            got = await c.get_manifest(ref)
            return digest, got

    digest, got = run(go())
    assert digest == sha256_digest(INDEX)
    assert got.body == INDEX and got.media_type == mediatypes.OCI_INDEX and got.digest == digest
    put = next(r for r in fake.requests if r.method == "PUT" and "authorization" in r.headers)
    assert put.headers["content-type"] == mediatypes.OCI_INDEX
    get = [r for r in fake.requests if r.method == "GET" and "/manifests/" in r.url.path][-1]
    for mt in (mediatypes.OCI_INDEX, mediatypes.DOCKER_LIST, mediatypes.OCI_MANIFEST, mediatypes.DOCKER_MANIFEST):
        assert mt in get.headers["accept"]
    token_req = fake.token_requests[0]
    assert token_req.url.params["service"] == HOST
    assert token_req.headers["authorization"] == ALICE


def test_wrong_credentials_are_one_line_refusal_exit_3():
    fake = FakeRegistry(HOST, users={"alice": "other"})
    with pytest.raises(RegistryRefused, match="refused the credentials") as err:
        run(client(fake).check_access(parse_reference(f"{HOST}/app:1")))
    assert err.value.exit_code == 3 and "\n" not in str(err.value)


def test_missing_credentials_say_docker_login_with_the_registry_name():
    fake = FakeRegistry(HOST)
    with pytest.raises(RegistryRefused, match="run `docker login registry.test`"):
        run(client(fake, config={}).check_access(parse_reference(f"{HOST}/app:1")))


def test_check_access_for_push_fails_before_building_when_the_account_may_only_pull():
    """/v2/ answers any anonymous token; only an upload shows push rights (and is cancelled)."""
    fake = FakeRegistry(HOST)
    with pytest.raises(RegistryRefused, match="docker login registry.test"):
        run(client(fake, config={}).check_access(parse_reference(f"{HOST}/someone-else/app:1")))
    fake = FakeRegistry(HOST)
    run(client(fake).check_access(parse_reference(f"{HOST}/alice/app:1")))
    assert fake.uploads == {}  # the probe's upload session was cancelled
    assert [r.method for r in fake.requests if "/uploads/" in r.url.path][-1] == "DELETE"


def test_docker_hub_credentials_are_looked_up_under_the_name_docker_login_stores():
    """`docker login` stores Hub credentials under https://index.docker.io/v1/; the API host is
    registry-1.docker.io and the token service auth.docker.io: the credentials must reach the
    token service (finding 2)."""
    assert load_credentials("registry-1.docker.io", HUB_CONFIG) == {"username": "alice", "password": "s3cret"}
    fake = FakeRegistry("registry-1.docker.io", realm="https://auth.docker.io/token", service="registry.docker.io")

    async def go():
        async with client(fake, config=HUB_CONFIG) as c:
            ref = parse_reference("alice/app:1")
            await c.check_access(ref)
            await c.put_manifest(ref, INDEX)

    run(go())
    assert {r.url.host for r in fake.token_requests} == {"auth.docker.io"}
    assert all(r.headers.get("authorization") == ALICE for r in fake.token_requests)
    assert "repository:alice/app:pull,push" in fake.token_requests[0].url.params.get_list("scope")
    assert {r.url.host for r in fake.requests if r.url.path.startswith("/v2/")} == {"registry-1.docker.io"}
    assert fake.manifests[("alice/app", "1")][0] == INDEX


def test_docker_hub_missing_credentials_hint_is_plain_docker_login():
    fake = FakeRegistry("registry-1.docker.io", realm="https://auth.docker.io/token")
    with pytest.raises(RegistryRefused) as err:
        run(client(fake, config={}).check_access(parse_reference("alice/app:1")))
    assert "run `docker login`" in str(err.value) and "registry-1.docker.io" not in str(err.value)


@pytest.fixture
def helper_on_path(tmp_path, monkeypatch):
    """A tiny docker-credential-x on PATH: answers alice/s3cret for the servers listed in
    $HELPER_KNOWS and logs every server it is asked for."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "asked"
    script = bindir / "docker-credential-x"
    script.write_text(
        "#!/bin/sh\n"
        "read -r server\n"
        f"printf '%s\\n' \"$server\" >> '{log}'\n"
        "case \" $HELPER_KNOWS \" in *\" $server \"*)\n"
        "  printf '{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"s3cret\"}' \"$server\"; exit 0;;\n"
        "esac\n"
        "echo 'credentials not found in native keychain'; exit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_creds_store_is_asked_for_docker_hub_by_its_index_url(helper_on_path, monkeypatch):
    monkeypatch.setenv("HELPER_KNOWS", "https://index.docker.io/v1/")
    fake = FakeRegistry("registry-1.docker.io", realm="https://auth.docker.io/token")
    run(client(fake, config={"credsStore": "x"}).check_access(parse_reference("alice/app:1")))
    assert helper_on_path.read_text().split() == ["https://index.docker.io/v1/"]  # asked once, cached
    assert all(r.headers.get("authorization") == ALICE for r in fake.token_requests)


def test_cred_helpers_entry_is_used_for_its_registry(helper_on_path, monkeypatch):
    monkeypatch.setenv("HELPER_KNOWS", HOST)
    fake = FakeRegistry(HOST)
    run(client(fake, config={"credHelpers": {HOST: "x"}}).check_access(parse_reference(f"{HOST}/app:1")))
    assert helper_on_path.read_text().split() == [HOST]
    assert fake.token_requests[0].headers["authorization"] == ALICE


def test_a_missing_credential_helper_is_one_line_naming_it_and_prints_nothing(recwarn):
    fake = FakeRegistry(HOST)
    with pytest.raises(EnvironmentProblem) as err:
        run(client(fake, config={"credsStore": "nosuch-helper-archfleet"}).check_access(
            parse_reference(f"{HOST}/app:1")))
    assert "docker-credential-nosuch-helper-archfleet" in str(err.value) and "\n" not in str(err.value)
    assert not [w for w in recwarn if "docker-credential" in str(w.message)]


# -- where credentials may go (finding 23) --------------------------------------------------------

def _realm_fake(realm, host=HOST):
    fake = FakeRegistry(host, realm=realm)
    elsewhere: list[httpx.Request] = []

    def handler(request):
        if request.url.host != host.split(":")[0]:
            elsewhere.append(request)
            return httpx.Response(200, json={"token": json.dumps({"user": "alice", "access": []})})
        if request.url.scheme == "https" and host.endswith(":5000"):
            raise httpx.ConnectError("wrong version number") from ssl.SSLError(1, "WRONG_VERSION_NUMBER")
        return fake(request)

    return fake, elsewhere, handler


def test_an_http_realm_on_another_host_gets_no_credentials_and_one_line():
    fake, elsewhere, handler = _realm_fake("http://collector.example.net/t")
    c = RegistryClient(transport=httpx.MockTransport(handler), docker_config=CONFIG)
    with pytest.raises(EnvironmentProblem) as err:
        run(c.check_access(parse_reference(f"{HOST}/app:1")))
    assert elsewhere == []  # nothing at all was sent there
    assert "collector.example.net" in str(err.value) and "\n" not in str(err.value)


def test_an_http_realm_on_another_host_of_an_insecure_registry_gets_no_credentials():
    fake, elsewhere, handler = _realm_fake("http://collector.example.net/t", host="lab.registry:5000")
    c = RegistryClient(["lab.registry:5000"], transport=httpx.MockTransport(handler),
                       docker_config={"auths": {"lab.registry:5000": CONFIG["auths"][HOST]}})
    with pytest.raises(EnvironmentProblem, match="will not send credentials"):
        run(c.check_access(parse_reference("lab.registry:5000/app:1")))
    assert elsewhere == []


def test_an_http_realm_on_the_insecure_registrys_own_host_gets_the_credentials():
    fake, elsewhere, handler = _realm_fake("http://lab.registry:5001/token", host="lab.registry:5000")
    c = RegistryClient(["lab.registry:5000"], transport=httpx.MockTransport(handler),
                       docker_config={"auths": {"lab.registry:5000": CONFIG["auths"][HOST]}})
    run(c.check_access(parse_reference("lab.registry:5000/app:1")))
    assert fake.token_requests and fake.token_requests[0].headers["authorization"] == ALICE
    assert fake.token_requests[0].url.scheme == "http"


def test_an_https_realm_on_another_host_gets_the_credentials():
    fake = FakeRegistry(HOST, realm="https://auth.example.net/token")
    run(client(fake).check_access(parse_reference(f"{HOST}/app:1")))
    assert fake.token_requests[0].url.host == "auth.example.net"
    assert fake.token_requests[0].headers["authorization"] == ALICE


# -- TLS for insecure registries (finding 15) ---------------------------------------------------------

def _tls_transports(fake, *, speaks_tls=True):
    """transport_for(verify): a self-signed registry (certificate verification fails unless
    verify is False), or one that does not speak TLS at all."""
    used: list[tuple[object, str]] = []

    def transport_for(verify):
        def handler(request):
            used.append((verify, str(request.url)))
            if request.url.scheme == "https":
                if not speaks_tls:
                    raise httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER]") from ssl.SSLError(1, "WRONG_VERSION_NUMBER")
                if verify is not False:
                    raise httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] self-signed") from \
                        ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate")
            return fake(request)

        return httpx.MockTransport(handler)

    return transport_for, used


def test_insecure_self_signed_https_registry_is_used_over_https_without_verification():
    fake = FakeRegistry("reg.lan:5000", anonymous_pull=True)
    fake.manifests[("app", "1")] = (INDEX, mediatypes.OCI_INDEX)
    transport_for, used = _tls_transports(fake)

    async def go():
        async with RegistryClient(["reg.lan:5000"], transport_for=transport_for, docker_config={}) as c:
            manifest = await c.get_manifest(parse_reference("reg.lan:5000/app:1"))
            return manifest, c.scheme_of("reg.lan:5000")

    manifest, scheme = run(go())
    assert manifest.body == INDEX
    assert scheme == "https (certificate not verified)"
    assert not [url for _, url in used if url.startswith("http://")]  # no fallback to plain HTTP
    assert all(verify is False for verify, url in used if "/manifests/" in url)


def test_insecure_registry_that_does_not_speak_tls_falls_back_to_http():
    fake = FakeRegistry("reg.lan:5000", anonymous_pull=True)
    fake.manifests[("app", "1")] = (INDEX, mediatypes.OCI_INDEX)
    transport_for, used = _tls_transports(fake, speaks_tls=False)

    async def go():
        async with RegistryClient(["reg.lan:5000"], transport_for=transport_for, docker_config={}) as c:
            await c.get_manifest(parse_reference("reg.lan:5000/app:1"))
            return c.scheme_of("reg.lan:5000")

    assert run(go()) == "http"
    assert all(verify is not False for verify, _ in used)  # TLS was refused, not unverified


def test_requests_that_start_together_share_one_tls_attempt():
    """Rule (issue 17): an insecure registry's scheme is probed once per client, however many
    requests start before it is known (a build resolves its bases, checks push access and looks
    up known layers at once: six TLS handshakes on a plain-HTTP loopback registry before)."""
    fake = FakeRegistry("reg.lan:5000", anonymous_pull=True)
    fake.manifests[("app", "1")] = (INDEX, mediatypes.OCI_INDEX)
    sync_for, used = _tls_transports(fake, speaks_tls=False)

    def transport_for(verify):  # answers after a turn of the loop, as a network does
        sync = sync_for(verify)

        async def handler(request):
            await asyncio.sleep(0)
            return await sync.handle_async_request(request)

        return httpx.MockTransport(handler)

    async def go():
        async with RegistryClient(["reg.lan:5000"], transport_for=transport_for, docker_config={}) as c:
            await asyncio.gather(*(c.get_manifest(parse_reference("reg.lan:5000/app:1")) for _ in range(4)))
            return c.scheme_of("reg.lan:5000")

    assert run(go()) == "http"
    assert [url for _, url in used if url.startswith("https://")] == ["https://reg.lan:5000/v2/"]


def test_a_secure_registry_with_an_untrusted_certificate_is_never_used_unverified():
    fake = FakeRegistry("reg.lan", anonymous_pull=True)
    transport_for, used = _tls_transports(fake)
    c = RegistryClient(transport_for=transport_for, docker_config={})
    with pytest.raises(EnvironmentProblem, match="certificate is not trusted"):
        run(c.get_manifest(parse_reference("reg.lan/app:1")))
    assert all(verify is not False for verify, _ in used)


# -- retries (finding 24) -------------------------------------------------------------------------

def _answers_first(fake, *answers):
    """A handler answering ``answers`` (Responses or exceptions) first, then as ``fake``."""
    pending = list(answers)

    def handler(request):
        if request.url.path != "/token" and pending:
            nxt = pending.pop(0)
            fake.requests.append(request)
            if isinstance(nxt, Exception):
                raise nxt
            return nxt
        return fake(request)

    return handler


def test_retries_5xx_with_backoff(sleeps):
    fake = FakeRegistry(HOST)
    handler = _answers_first(fake, httpx.Response(503), httpx.Response(502))
    run(RegistryClient(transport=httpx.MockTransport(handler), docker_config=CONFIG).check_access(
        parse_reference(f"{HOST}/app:1")))
    assert sleeps == [0.25, 0.5]


def test_429_waits_as_long_as_retry_after_says(sleeps):
    fake = FakeRegistry(HOST)
    handler = _answers_first(fake, httpx.Response(429, headers={"Retry-After": "7"}))
    c = RegistryClient(transport=httpx.MockTransport(handler), docker_config=CONFIG)
    run(c.put_manifest(parse_reference(f"{HOST}/app:1"), INDEX))
    assert sleeps == [7.0]


def test_retry_after_as_an_http_date(sleeps):
    fake = FakeRegistry(HOST)
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    handler = _answers_first(fake, httpx.Response(503, headers={"Retry-After": when}))
    run(RegistryClient(transport=httpx.MockTransport(handler), docker_config=CONFIG).put_manifest(
        parse_reference(f"{HOST}/app:1"), INDEX))
    assert len(sleeps) == 1 and 27 <= sleeps[0] <= 31


def test_retry_after_beyond_the_cap_is_reported_not_waited_for(sleeps):
    fake = FakeRegistry(HOST)
    handler = _answers_first(fake, httpx.Response(429, headers={"Retry-After": "3600"},
                                                  json={"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]}))
    with pytest.raises(RegistryRefused, match="3600 s") as err:
        run(RegistryClient(transport=httpx.MockTransport(handler), docker_config=CONFIG).put_manifest(
            parse_reference(f"{HOST}/app:1"), INDEX))
    assert sleeps == [] and err.value.exit_code == 3 and err.value.status == 429


def test_429_that_persists_is_a_refusal_exit_3(sleeps):
    fake = FakeRegistry(HOST)
    handler = _answers_first(fake, *[httpx.Response(429) for _ in range(10)])
    with pytest.raises(RegistryRefused, match="rate limit"):
        run(RegistryClient(transport=httpx.MockTransport(handler), docker_config=CONFIG).put_manifest(
            parse_reference(f"{HOST}/app:1"), INDEX))
    assert len(sleeps) == 3


def test_403_denied_is_a_refusal_with_the_login_hint():
    fake = FakeRegistry(HOST)
    handler = _answers_first(fake, httpx.Response(403, json={"errors": [{"code": "DENIED", "message": "quota exceeded"}]}))
    with pytest.raises(RegistryRefused, match="quota exceeded.*docker login registry.test"):
        run(RegistryClient(transport=httpx.MockTransport(handler), docker_config=CONFIG).put_manifest(
            parse_reference(f"{HOST}/app:1"), INDEX))


def _copy_setup(cut):
    """A source image in registry src.test and an empty destination registry.test; ``cut`` is
    called for every request to the destination and may raise instead of answering."""
    src_fake, dst_fake = FakeRegistry("src.test", anonymous_pull=True), FakeRegistry(HOST)
    layer = os.urandom(1000)
    src_fake.add_image("app", [layer])

    def handler(request):
        if request.url.host == "src.test":
            return src_fake(request)
        return cut(request, dst_fake)

    return layer, dst_fake, RegistryClient(transport=httpx.MockTransport(handler), docker_config=CONFIG)


@pytest.mark.parametrize("arrived", [True, False])
def test_an_upload_put_cut_off_by_a_read_timeout_is_not_sent_again_to_the_same_url(sleeps, arrived):
    """After a read timeout the PUT may or may not have completed the upload: the blob is
    looked for (HEAD) and, if missing, uploaded again in a new session, never re-PUT."""
    cuts = []

    def cut(request, fake):
        if request.method == "PUT" and "/uploads/" in request.url.path and not cuts:
            cuts.append(str(request.url))
            if arrived:
                fake(request)
            raise httpx.ReadTimeout("read timed out")
        return fake(request)

    layer, fake, c = _copy_setup(cut)
    run(c.copy_blob(parse_reference("src.test/app"), parse_reference(f"{HOST}/app"), digest_of(layer)))
    assert fake.blobs[("app", digest_of(layer))] == layer
    puts = [str(r.url) for r in fake.requests if r.method == "PUT"] + ([] if arrived else cuts)
    assert len(puts) == len(set(puts)) == (1 if arrived else 2)  # never the same upload URL twice
    assert fake.sessions == (1 if arrived else 2)
    assert sleeps == []


def test_a_patch_cut_off_restarts_the_upload_in_a_new_session(monkeypatch):
    monkeypatch.setattr("archfleet.registry.CHUNK", 256)
    cuts = []

    def cut(request, fake):
        if request.method == "PATCH" and len(cuts) == 0 and fake.patches == 1:
            cuts.append(request.url.path)
            raise httpx.RemoteProtocolError("peer closed connection")
        return fake(request)

    layer, fake, c = _copy_setup(cut)
    run(c.copy_blob(parse_reference("src.test/app"), parse_reference(f"{HOST}/app"), digest_of(layer)))
    assert fake.blobs[("app", digest_of(layer))] == layer
    sessions = {r.url.path for r in fake.requests if r.method == "PATCH"}
    assert len(sessions) == 2 and cuts[0] in sessions


# -- streamed copies and mounts (finding 22) ------------------------------------------------------

def test_a_50_mb_blob_is_copied_in_chunks_never_held_whole(monkeypatch):
    chunk = 4 * 1024 * 1024
    monkeypatch.setattr("archfleet.registry.CHUNK", chunk)
    size, piece = 50 * 1000 * 1000, 1024 * 1024
    pattern = bytes(range(256)) * (piece // 256)
    import hashlib

    h = hashlib.sha256()
    for off in range(0, size, piece):
        h.update(pattern[: min(piece, size - off)])
    digest = "sha256:" + h.hexdigest()

    async def body():
        for off in range(0, size, piece):
            yield pattern[: min(piece, size - off)]

    dst = FakeRegistry(HOST, keep_blobs=False)

    def handler(request):
        if request.url.host == "src.test":
            if request.method == "HEAD":
                return httpx.Response(200)
            return httpx.Response(200, content=body())
        return dst(request)

    async def go():
        async with RegistryClient(transport=httpx.MockTransport(handler), docker_config=CONFIG) as c:
            await c.copy_blob(parse_reference("src.test/app"), parse_reference(f"{HOST}/app"), digest)

    tracemalloc.start()
    try:
        run(go())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dst.blobs[("app", digest)] == size
    assert dst.peak_patch == chunk  # no request body bigger than one chunk
    assert dst.patches == size // chunk
    assert peak < 2 * chunk, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB blob"


def test_a_cross_repository_mount_asks_for_pull_on_the_source_and_push_on_the_destination():
    fake = FakeRegistry(HOST)
    layer = os.urandom(100)
    fake.add_image("team/src", [layer])
    run(client(fake).copy_blob(parse_reference(f"{HOST}/team/src"), parse_reference(f"{HOST}/team/dst"),
                               digest_of(layer)))
    assert fake.blobs[("team/dst", digest_of(layer))] == layer
    mount_tokens = [r for r in fake.token_requests if "repository:team/src:pull" in r.url.params.get_list("scope")]
    assert mount_tokens and "repository:team/dst:pull,push" in mount_tokens[0].url.params.get_list("scope")
    assert not [r for r in fake.requests if r.method == "GET" and "/blobs/" in r.url.path]  # mounted, not copied


def test_a_registry_that_does_not_mount_gets_a_streamed_copy_in_the_session_it_opened():
    fake = FakeRegistry(HOST, can_mount=False)
    layer = os.urandom(100)
    fake.add_image("src", [layer])
    run(client(fake).copy_blob(parse_reference(f"{HOST}/src"), parse_reference(f"{HOST}/dst"), digest_of(layer)))
    assert fake.blobs[("dst", digest_of(layer))] == layer
    assert fake.sessions == 1  # the session the mount request opened was used


def test_a_source_blob_that_does_not_match_its_digest_is_not_committed():
    src_fake, dst_fake = FakeRegistry("src.test", anonymous_pull=True), FakeRegistry(HOST)
    layer = os.urandom(100)
    src_fake.add_image("app", [layer])
    wrong = digest_of(layer)
    src_fake.blobs[("app", wrong)] = b"something else"

    def handler(request):
        return src_fake(request) if request.url.host == "src.test" else dst_fake(request)

    with pytest.raises(RegistryError, match="does not match its digest"):
        run(RegistryClient(transport=httpx.MockTransport(handler), docker_config=CONFIG).copy_blob(
            parse_reference("src.test/app"), parse_reference(f"{HOST}/app"), wrong))
    assert ("app", wrong) not in dst_fake.blobs and dst_fake.uploads == {}


# -- push_blob: a blob from anywhere, sent at most once (issue 15) ---------------------------------


def _pieces(data: bytes, calls: list):
    def source():
        calls.append(1)

        async def gen():
            for i in range(0, len(data), 1000):
                yield data[i:i + 1000]
        return gen()
    return source


def test_push_blob_skips_what_is_there_mounts_what_a_sibling_has_and_uploads_the_rest():
    fake = FakeRegistry(HOST)
    there, sibling, new = os.urandom(300), os.urandom(300), os.urandom(3000)
    fake.blobs[("app", digest_of(there))] = there
    fake.blobs[("base", digest_of(sibling))] = sibling
    app, base = parse_reference(f"{HOST}/app"), parse_reference(f"{HOST}/base")
    calls: list = []

    async def go():
        async with client(fake) as c:
            return [await c.push_blob(app, digest_of(there), _pieces(there, calls), mount_from=[base]),
                    await c.push_blob(app, digest_of(sibling), _pieces(sibling, calls), mount_from=[base]),
                    await c.push_blob(app, digest_of(new), _pieces(new, calls), mount_from=[base])]

    assert run(go()) == ["skipped", "mounted", "uploaded"]
    assert len(calls) == 1  # only the new blob was read, once
    assert fake.blobs[("app", digest_of(new))] == new and fake.blobs[("app", digest_of(sibling))] == sibling


def test_children_sharing_a_layer_write_it_once_one_writer_at_a_time():
    """Rule: one process writes one blob into one repository once at a time (distribution's
    filesystem driver rewrites the blob's link file in place on each upload or mount, and a
    sibling's manifest PUT reading it meanwhile is refused with DIGEST_INVALID). Two children
    pushing the same layer at once: one uploads, the other waits and finds it there."""
    fake = FakeRegistry(HOST)
    layer = os.urandom(5000)
    app = parse_reference(f"{HOST}/app")
    calls: list = []

    def slow_source():  # yields to the other child between pieces, as a real spool read does
        calls.append(1)

        async def gen():
            for i in range(0, len(layer), 1000):
                await asyncio.sleep(0)
                yield layer[i:i + 1000]
        return gen()

    async def go():  # each platform's build has a client of its own
        async with client(fake) as one, client(fake) as two:
            return await asyncio.gather(one.push_blob(app, digest_of(layer), slow_source),
                                        two.push_blob(app, digest_of(layer), slow_source))

    assert sorted(run(go())) == ["skipped", "uploaded"]
    assert len(calls) == 1 and fake.blobs[("app", digest_of(layer))] == layer


def test_push_blob_refuses_bytes_that_are_not_the_digest_and_commits_nothing():
    fake = FakeRegistry(HOST)
    app = parse_reference(f"{HOST}/app")
    wrong = digest_of(b"what was promised")
    with pytest.raises(RegistryError, match="does not match its digest"):
        run(client(fake).push_blob(app, wrong, _pieces(b"something else", [])))
    assert ("app", wrong) not in fake.blobs and fake.uploads == {}


def test_content_under_a_digest_is_read_once_per_client():
    """A manifest or a config read by digest is kept: the reuse look-up, verification and the
    merge of one command read it once."""
    fake = FakeRegistry(HOST)
    digest = fake.add_image("app", [os.urandom(10)])
    ref = parse_reference(f"{HOST}/app").with_digest(digest)

    async def go():
        async with client(fake) as c:
            one = await c.get_manifest(ref)
            config = one.json()["config"]["digest"]
            blob = await c.get_blob(ref, config)
            two = await c.get_manifest(ref)
            assert await c.get_blob(ref, config) == blob
            return one, two

    one, two = run(go())
    assert one == two
    reads = [r.url.path for r in fake.requests if r.method == "GET" and r.url.path.startswith("/v2/app/")
             and "authorization" in r.headers]
    assert len(reads) == len(set(reads)) == 2


# -- the rest -------------------------------------------------------------------------------------

def test_digest_mismatch_is_refused():
    def handler(request):
        return httpx.Response(200, content=b'{"mediaType":"x"}', headers={"Docker-Content-Digest": "sha256:" + "0" * 64})

    async def go():
        async with RegistryClient(transport=httpx.MockTransport(handler), docker_config={}) as c:
            await c.get_manifest(parse_reference(f"{HOST}/app:1"))

    with pytest.raises(RegistryError, match="does not match"):
        run(go())


def test_plain_http_only_for_loopback_and_insecure():
    c = RegistryClient(["lab.registry:5000"], docker_config={})
    assert c.plain_http_allowed("127.0.0.1:5000")
    assert c.plain_http_allowed("lab.registry:5000")
    assert not c.plain_http_allowed("registry.test")
    run(c.aclose())


def test_parse_challenge():
    kind, params = parse_challenge('Bearer realm="https://auth.io/token",service="registry.io",scope="repository:a/b:pull,push"')
    assert kind == "bearer"
    assert params == {"realm": "https://auth.io/token", "service": "registry.io", "scope": "repository:a/b:pull,push"}
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})


@pytest.mark.parametrize("text, answer", [
    ("denied: requested access to the resource is denied", ("DENIED", None)),
    ("unauthorized: authentication required", ("UNAUTHORIZED", None)),
    ("toomanyrequests: You have reached your pull rate limit.", ("TOOMANYREQUESTS", None)),
    ("manifest invalid: manifest invalid", ("MANIFEST_INVALID", None)),
    ("name unknown: repository name not known to registry", ("NAME_UNKNOWN", None)),
    ("errors:\ndenied: quota exceeded\nunauthorized: no\n", ("DENIED", None)),
    ("received unexpected HTTP status: 429 Too Many Requests", (None, 429)),
    ("error parsing HTTP 403 response body: unexpected end of JSON input: \"\"", (None, 403)),
    ("Get \"https://r/v2/\": dial tcp 10.0.0.1:443: connect: connection refused", (None, None)),
    ("executor failed: unknown flag", (None, None)),
])
def test_registry_answer_reads_the_error_code_dockerd_relays(text, answer):
    """dockerd renders distribution error codes lower-cased with spaces, then ': message'."""
    assert registry_answer(text) == answer


def test_a_registry_nobody_answers_for_is_registry_unreachable_by_type(sleeps):
    """Rule: "cannot reach the registry" is its own type (RegistryUnreachable, exit 3), so the
    doctor and the CLI choose their advice by type, not by the words of the message."""
    from archfleet.errors import RegistryUnreachable

    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    client = RegistryClient(transport=httpx.MockTransport(refuse), docker_config=CONFIG)
    with pytest.raises(RegistryUnreachable) as info:
        run(client.check_access(parse_reference(f"{HOST}/app:1")))
    assert info.value.exit_code == 3 and str(info.value).startswith(f"registry {HOST} unreachable")


@pytest.mark.parametrize("store,system", [
    ("file", True),  # the system's CA file (Debian's ca-certificates.crt)
    ("hashed-dir", True),  # a CA directory of hash-named certificates (c_rehash)
    ("empty-dir", False),  # /etc/ssl/certs without ca-certificates: no roots at all
    ("none", False),
])
def test_the_system_ca_store_is_used_when_there_is_one_else_certifis(tmp_path, monkeypatch, store, system):
    """Rule (dockerd trusts the system's store): a CA installed there is trusted; a machine with
    no store, or an empty CA directory, falls back to certifi's bundle rather than to no roots."""
    import ssl
    from pathlib import Path

    import certifi
    from archfleet import registry as reg

    pem = Path(certifi.where()).read_text()
    one = pem[pem.index("-----BEGIN CERTIFICATE-----"):pem.index("-----END CERTIFICATE-----") + 25] + "\n"
    cafile = capath = None
    if store == "file":
        cafile = tmp_path / "ca.pem"
        cafile.write_text(one)
    elif store in ("hashed-dir", "empty-dir"):
        capath = tmp_path / "certs"
        capath.mkdir()
        if store == "hashed-dir":
            (capath / "0123abcd.0").write_text(one)
    paths = ssl.DefaultVerifyPaths(str(cafile) if cafile else None, str(capath) if capath else None,
                                   "SSL_CERT_FILE", str(cafile or tmp_path / "nofile"), "SSL_CERT_DIR",
                                   str(capath or tmp_path / "nodir"))
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: paths)
    assert reg._system_store() is system
    if store == "file":
        monkeypatch.setenv("SSL_CERT_FILE", str(cafile))
        assert reg.trust_roots().cert_store_stats()["x509_ca"] == 1  # the system's store, not certifi's ~120
    if not system:
        assert reg.trust_roots().cert_store_stats()["x509_ca"] > 50  # certifi's bundle


def test_the_system_tls_context_is_made_once_in_a_thread_and_its_failure_is_raised_where_taken(monkeypatch):
    """Rule (issue 17, fixed cost): ``prepare_tls`` starts loading the CA store in a thread (OpenSSL
    lets go of the GIL), once per process; every client takes that one context; an error making it
    is raised by ``_system_tls``, not lost in the thread."""
    import threading

    import archfleet.registry as reg

    made = []

    def fake_roots():
        made.append(threading.current_thread().name)
        return ssl.create_default_context()

    monkeypatch.setattr(reg, "_tls", None)
    monkeypatch.setattr(reg, "trust_roots", fake_roots)
    reg.prepare_tls()
    reg.prepare_tls()
    first = reg._system_tls()
    assert reg._system_tls() is first and made == ["archfleet-tls"]

    def broken():
        raise ssl.SSLError("no CA store")

    monkeypatch.setattr(reg, "_tls", None)
    monkeypatch.setattr(reg, "trust_roots", broken)
    with pytest.raises(ssl.SSLError, match="no CA store"):
        reg._system_tls()
