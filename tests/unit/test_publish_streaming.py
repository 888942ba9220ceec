"""A layer compressed while the engine's export is read, and uploaded while it is compressed
once the push gate is open (archfleet.publish, "while it is read"; issue 17: a 30 MB layer's
compression and upload used to wait for the whole export).

Rules checked, each with the value that is right:
- the same layer gives the same blob, byte for byte, whether compressed from its spool file or
  fed in pieces of any size as it arrives (an unchanged layer is found in the registry);
- a new layer goes up in one stream upload while the export is read, and is not sent again;
- a layer whose print (size, first 512 KiB) is one this machine exported before is neither
  compressed nor sent while it is read (it is likely in the registry, whichever project pushed
  it: found there by HEAD, not sent); if its diff_id turns out new after all, it is compressed
  and sent after the read, as before;
- nothing is sent early while any known layer's print is unknown (the first push of a base);
- an early upload that failed is made again, the usual way, by upload();
- an early upload of a layer that turns out known is abandoned: its session cancelled, nothing
  linked in the registry;
- every layer read leaves its print for the learn stage (archfleet.layerprints).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from archfleet import layerprints, publish
from archfleet.reference import parse_reference

from fakeregistry import FakeRegistry
from images import AMD64
from test_publish import HOST, client, docker_archive, pieces, raw_layer, sha, spool  # noqa: F401 (a fixture)

BIG = 3 * 1024 * 1024  # bytes: a layer over publish.SMALL (spooled, so it may be streamed)


def big_layer(name: str, size: int = BIG) -> bytes:
    return raw_layer({f"bin/{name}": AMD64 + os.urandom(size)})


def known_blob(raw: bytes, repo: str = "base") -> tuple[publish.Blob, bytes]:
    gz = gzip.compress(raw, mtime=0)
    return publish.Blob(sha(gz), len(gz), publish.DOCKER_LAYER_GZIP, mount_from=f"{HOST}/{repo}"), gz


def registry_holding(raw: bytes, repo: str = "base") -> tuple[FakeRegistry, dict[str, publish.Blob]]:
    """A registry whose ``repo`` holds ``raw`` gzipped; the ``known`` map that says so."""
    fake = FakeRegistry(HOST)
    blob, gz = known_blob(raw, repo)
    fake.blobs[(repo, blob.digest)] = gz
    return fake, {sha(raw): blob}


def learn_prints(*raws: bytes) -> None:
    layerprints.store((sha(r), len(r), hashlib.sha256(r[:layerprints.HEAD]).hexdigest()) for r in raws)


def run(fake, tar, image_id, known, *, push=True, upload=True, repo="app"):
    """prepare (with the push given when ``push``), then upload; returns (prepared, counts)."""
    dst = parse_reference(f"{HOST}/{repo}")

    async def go():
        async with client(fake) as c:
            got = await publish.prepare(pieces(tar, 256 * 1024), node="n1", image_id=image_id, known=known,
                                        push=(c, dst) if push else None)
            try:
                counts = (await publish.upload(c, got, dst))[3] if upload else None
            except BaseException:
                publish.discard(got)
                raise
            return got, counts

    return asyncio.run(go())


@pytest.mark.parametrize("size", [0, 1, 5000, publish.BLOCK - 1, publish.BLOCK, publish.BLOCK + 1, 2 * publish.BLOCK,
                                  5 * publish.BLOCK + 17])
def test_a_layer_fed_in_pieces_of_any_size_compresses_to_the_same_blob_as_from_its_file(tmp_path, size):
    data = os.urandom(size // 2) + b"a" * (size - size // 2)
    whole = publish.gzip_layer(publish._Member("x", "", size, data=data), tmp_path / "a")
    with ThreadPoolExecutor(2) as pool:
        packer = publish._Gzip(tmp_path / "b", pool)
        cuts = [0, 1, 7, 4096, 300_000, 700_001]
        i = 0
        for n in (cuts * (1 + size // 100_000))[1:]:
            packer.feed(data[i:i + n])
            i += n
        packer.feed(data[i:])
        fed = packer.close()
    assert fed == whole
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert gzip.decompress((tmp_path / "b").read_bytes()) == data


def test_a_new_layer_goes_up_in_one_stream_upload_while_the_export_is_read_and_is_not_sent_again():
    base = big_layer("base")
    fake, known = registry_holding(base)
    mine = big_layer("app")
    learn_prints(base)
    tar, image_id = docker_archive([base, mine])
    got, counts = run(fake, tar, image_id, known)
    try:
        layer = got.blobs[2]
        assert list(got.streamed) == [layer.digest]
        assert fake.streamed == 1  # the one PATCH without Content-Range
        assert fake.blobs[("app", layer.digest)] == layer.path.read_bytes()
        assert gzip.decompress(fake.blobs[("app", layer.digest)]) == mine
        assert counts == {"uploaded": 2, "mounted": 1, "skipped": 0}  # my layer (early) and the config
        assert fake.sessions == 2  # my layer's, the config's: the layer was not sent twice
    finally:
        publish.discard(got)


def test_the_early_blob_is_the_blob_the_usual_way_makes():
    """The same child either way: a push past the gate names the same layer digest as one before it."""
    mine = big_layer("app")
    tar, image_id = docker_archive([mine])
    early, _ = run(FakeRegistry(HOST), tar, image_id, {})
    late, _ = run(FakeRegistry(HOST), tar, image_id, {}, push=False)
    try:
        assert early.streamed and not late.streamed
        assert early.manifests == late.manifests
    finally:
        publish.discard(early)
        publish.discard(late)


def test_nothing_is_sent_early_while_a_known_layers_print_is_unknown():
    base = big_layer("base")
    fake, known = registry_holding(base)
    tar, image_id = docker_archive([base, big_layer("app")])
    got, counts = run(fake, tar, image_id, known)
    try:
        assert fake.streamed == 0 and not got.streamed
        assert counts == {"uploaded": 2, "mounted": 1, "skipped": 0}
    finally:
        publish.discard(got)


def test_a_layer_with_a_known_layers_print_is_not_compressed_while_read_and_a_new_one_with_it_is_sent_after():
    """Two layers with the same size and first 512 KiB but different ends: the print cannot tell
    them apart, so the new one is compressed after the read (the same blob), not early."""
    head = os.urandom(BIG)
    old = raw_layer({"bin/app": head + b"old!"})
    new = raw_layer({"bin/app": head + b"new!"})
    assert len(old) == len(new) and old[:layerprints.HEAD] == new[:layerprints.HEAD] and sha(old) != sha(new)
    fake, known = registry_holding(old, "app")
    learn_prints(old)
    tar, image_id = docker_archive([new])
    got, counts = run(fake, tar, image_id, known)
    try:
        assert not got.streamed and fake.streamed == 0
        layer = got.blobs[1]
        assert gzip.decompress(fake.blobs[("app", layer.digest)]) == new
        assert counts == {"uploaded": 2, "mounted": 0, "skipped": 0}
    finally:
        publish.discard(got)


def test_a_layer_exported_here_before_is_not_sent_early_and_the_registry_that_holds_it_gets_no_byte():
    """Found by the fresh-user helper: a layer the registry held, pushed from another checkout
    (so neither a base's nor this project's last child's: not ``known``), was streamed in full,
    then found there. Exported here before, its print is remembered: it is read as before, and
    the HEAD finds it before a byte is sent."""
    fake = FakeRegistry(HOST)
    pushed = big_layer("app")
    gz = publish.gzip_layer(publish._Member("x", "", len(pushed), data=pushed), Path(os.environ["TMPDIR"]) / "gz")
    fake.blobs[("app", gz[0])] = (Path(os.environ["TMPDIR"]) / "gz").read_bytes()
    (Path(os.environ["TMPDIR"]) / "gz").unlink()
    learn_prints(pushed)  # another checkout's push exported it on this machine
    tar, image_id = docker_archive([pushed])
    got, counts = run(fake, tar, image_id, {})
    try:
        assert not got.streamed and fake.streamed == 0
        assert got.blobs[1].digest == gz[0]
        assert counts == {"uploaded": 1, "mounted": 0, "skipped": 1}  # the config; the layer was there
        assert fake.sessions == 1  # the config's: no upload of the layer began
    finally:
        publish.discard(got)


def test_an_early_upload_of_a_layer_that_turns_out_known_is_abandoned_and_nothing_is_linked():
    """A print remembered wrong (a cache edited by hand): the layer is streamed, then found known."""
    base = big_layer("base")
    fake, known = registry_holding(base)
    layerprints.store([(sha(base), len(base), "0" * 64)])
    tar, image_id = docker_archive([base])
    got, counts = run(fake, tar, image_id, known)
    try:
        assert not got.streamed and fake.streamed == 1
        linked = {d for repo, d in fake.blobs if repo == "app"}
        assert linked == {got.blobs[0].digest, known[sha(base)].digest}  # the config, the base's blob mounted
        assert fake.uploads == {}  # the early session was cancelled
        assert counts == {"uploaded": 1, "mounted": 1, "skipped": 0}
    finally:
        publish.discard(got)


@pytest.mark.parametrize("status", [401, 500, 503])
def test_an_early_upload_that_failed_is_made_again_the_usual_way(status):
    fake = FakeRegistry(HOST)
    refused = []

    def hook(request: httpx.Request):
        if request.method == "PATCH" and "content-range" not in request.headers and not refused:
            refused.append(status)
            if status == 401:
                return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{fake.realm}",'
                                                                        f'service="{fake.service}"'})
            return httpx.Response(status, json={"errors": [{"code": "UNKNOWN", "message": "no"}]})
        return None

    fake.hook = hook
    mine = big_layer("app")
    tar, image_id = docker_archive([mine])
    got, counts = run(fake, tar, image_id, {})
    try:
        layer = got.blobs[1]
        assert refused == [status]
        assert gzip.decompress(fake.blobs[("app", layer.digest)]) == mine
        assert counts["uploaded"] == 2
        assert fake.uploads == {} or all(u["size"] == 0 for u in fake.uploads.values())
    finally:
        publish.discard(got)


def test_every_layer_read_leaves_its_print():
    small = raw_layer({"etc/x": b"x"})
    mine = big_layer("app")
    tar, image_id = docker_archive([small, mine])
    got, _ = run(FakeRegistry(HOST), tar, image_id, {}, push=False, upload=False)
    try:
        assert set(got.layer_prints) == {(sha(r), len(r), hashlib.sha256(r[:layerprints.HEAD]).hexdigest())
                                         for r in (small, mine)}
    finally:
        publish.discard(got)


def test_a_cancelled_prepare_cancels_its_early_uploads_and_leaves_no_spool(spool):
    fake = FakeRegistry(HOST)
    mine = big_layer("app")
    tar, image_id = docker_archive([mine])
    dst = parse_reference(f"{HOST}/app")

    async def go():
        async with client(fake) as c:
            started = asyncio.Event()

            async def slow_tail():
                async for piece in pieces(tar[:-20_000], 256 * 1024):
                    yield piece
                started.set()
                await asyncio.sleep(30)

            task = asyncio.ensure_future(publish.prepare(slow_tail(), node="n1", image_id=image_id,
                                                         push=(c, dst)))
            await asyncio.wait_for(started.wait(), 10)
            await asyncio.sleep(0.2)  # the early upload is under way
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    left = asyncio.run(go())
    assert left == []
    assert not any(repo == "app" for repo, _ in fake.blobs)
    assert list(spool.iterdir()) == []
