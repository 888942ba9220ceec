"""index.verify_child against an in-process registry (README: "verifies that each pushed image
really is the platform asked for (its config *and* the ELF header of the program it runs)";
design.md "Verification reads the program, not only the config"; concepts.md "Verification and
the index").

Rules, one test each: the config must name the platform; with the config right, the program
the image runs (ENTRYPOINT/CMD, through PATH) must be an ELF for that CPU, and the message says
which check fired ("runs ... built for"); a program not found falls back to the majority ELF
architecture of what was read; an image with no ELF at all passes; layers past the 64 MiB
budget are not fetched, the majority of what was read decides; a child that is an index is
flattened to its entry for the platform (attestation manifests left out); a layer that is not a
tar we can read (zstd, ...) is skipped as no evidence; a layer scanned once is not fetched again."""

from __future__ import annotations

import asyncio
import base64
import os

import httpx
import pytest

from archfleet import mediatypes
from archfleet.errors import VerificationFailed
from archfleet.index import CONTENT_BUDGET, verify_child
from archfleet.platforms import parse
from archfleet.reference import parse_reference
from archfleet.registry import RegistryClient

from fakeregistry import FakeRegistry, digest_of
from images import AMD64, ARM64, elf, layer_bytes

HOST = "registry.test"
CONFIG = {"auths": {HOST: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}
ARM, AMD = parse("linux/arm64"), parse("linux/amd64")
RUNS_UNAME = {"Cmd": ["uname", "-m"], "Env": ["PATH=/usr/bin:/bin"]}


def verify(fake: FakeRegistry, digest: str, platform, repo="app"):
    async def go():
        async with RegistryClient(transport=httpx.MockTransport(fake), docker_config=CONFIG) as client:
            return await verify_child(client, parse_reference(f"{HOST}/{repo}@{digest}"), platform)
    return asyncio.run(go())


def blob_gets(fake: FakeRegistry) -> list[str]:
    """The digests of the blobs fetched (GET), in order."""
    return [r.url.path.rsplit("/", 1)[1] for r in fake.requests if r.method == "GET" and "/blobs/sha256:" in r.url.path]


def layers_fetched(fake, layers: list[bytes]) -> list[int]:
    """Which of ``layers`` (by index) were fetched."""
    got = blob_gets(fake)
    return [i for i, data in enumerate(layers) if digest_of(data) in got]


def test_a_config_naming_another_platform_fails_as_a_config_mismatch():
    fake = FakeRegistry()
    digest = fake.add_image("app", [layer_bytes({"bin/uname": ARM64})], platform=("linux", "amd64"),
                            config=RUNS_UNAME)
    with pytest.raises(VerificationFailed) as err:
        verify(fake, digest, ARM)
    assert str(err.value) == f"requested linux/arm64 but the image pushed for it is linux/amd64 (registry.test/app@{digest})"


def test_a_right_config_over_a_program_for_another_cpu_fails_naming_the_program():
    """Docker 20.10's BuildKit writes the requested platform into the config of a final stage
    pinned elsewhere: the config says arm64, /bin/uname is an x86-64 ELF."""
    fake = FakeRegistry()
    digest = fake.add_image("app", [layer_bytes({"bin/busybox": AMD64, "bin/uname": "busybox"})],
                            platform=("linux", "arm64"), config=RUNS_UNAME)
    with pytest.raises(VerificationFailed) as err:
        verify(fake, digest, ARM)
    assert str(err.value) == ("requested linux/arm64 but the image pushed for it runs uname built for linux/amd64 "
                              "(its config claims linux/arm64; is the final stage pinned with FROM --platform?) "
                              f"(registry.test/app@{digest})")


def test_a_right_image_passes_and_is_described_as_the_registry_serves_it():
    fake = FakeRegistry()
    digest = fake.add_image("app", [layer_bytes({"bin/busybox": ARM64, "bin/uname": "busybox"})],
                            platform=("linux", "arm64"), config=RUNS_UNAME)
    child = verify(fake, digest, ARM)
    body, media_type = fake.manifests[("app", digest)]
    assert (child.platform, child.digest, child.media_type, child.size) == (ARM, digest, media_type, len(body))


@pytest.mark.parametrize("files,verdict", [
    # /app is not in the image: 2 arm64 ELFs against 1 amd64 -> arm64, right
    ({"lib/a.so": ARM64, "lib/b.so": ARM64, "usr/bin/helper": AMD64}, None),
    # majority amd64 -> wrong, and the message names the program asked for
    ({"lib/a.so": AMD64, "lib/b.so": AMD64, "usr/bin/helper": ARM64}, "runs /app built for linux/amd64"),
])
def test_a_program_not_found_falls_back_to_the_majority_elf_architecture(files, verdict):
    fake = FakeRegistry()
    digest = fake.add_image("app", [layer_bytes(files)], platform=("linux", "arm64"), config={"Cmd": ["/app"]})
    if verdict is None:
        assert verify(fake, digest, ARM).digest == digest
    else:
        with pytest.raises(VerificationFailed, match=verdict):
            verify(fake, digest, ARM)


def test_an_image_without_any_elf_passes_on_its_config():
    fake = FakeRegistry()
    digest = fake.add_image("app", [layer_bytes({"entry.sh": b"#!/bin/sh\necho hi\n", "etc/motd": b"hello"})],
                            platform=("linux", "s390x"), config={"Entrypoint": ["/entry.sh"]})
    assert verify(fake, digest, parse("linux/s390x")).digest == digest


def test_layers_past_the_64_mib_budget_are_not_read_and_the_majority_of_what_was_read_decides():
    """Read top first: the small top layer (two amd64 ELFs) fits, the base layer whose
    descriptor says 64 MiB does not, so it is never fetched (it holds the arm64 program). The
    majority of what was read, amd64, decides: wrong for arm64."""
    assert CONTENT_BUDGET == 64 * 1024 * 1024
    fake = FakeRegistry()
    base = layer_bytes({"bin/app": ARM64})
    top = layer_bytes({"usr/lib/x.so": AMD64, "usr/lib/y.so": AMD64})
    digest = fake.add_image("app", [base, top], platform=("linux", "arm64"), config={"Cmd": ["/bin/app"]},
                            declared_sizes={0: CONTENT_BUDGET})
    with pytest.raises(VerificationFailed, match="runs /bin/app built for linux/amd64"):
        verify(fake, digest, ARM)
    assert layers_fetched(fake, [base, top]) == [1]


def test_a_layer_that_exactly_fills_the_budget_is_still_read():
    fake = FakeRegistry()
    base = layer_bytes({"bin/app": ARM64})
    top = layer_bytes({"usr/lib/x.so": AMD64, "usr/lib/y.so": AMD64})
    digest = fake.add_image("app", [base, top], platform=("linux", "arm64"), config={"Cmd": ["/bin/app"]},
                            declared_sizes={0: CONTENT_BUDGET - len(top)})
    assert verify(fake, digest, ARM).digest == digest  # the program itself was found: arm64
    assert layers_fetched(fake, [base, top]) == [0, 1]


def test_reading_stops_at_the_layer_that_holds_the_program():
    fake = FakeRegistry()
    base = layer_bytes({"bin/app": AMD64, "lib/a.so": AMD64})  # overwritten above: never read
    top = layer_bytes({"bin/app": ARM64})
    digest = fake.add_image("app", [base, top], platform=("linux", "arm64"), config={"Cmd": ["/bin/app"]})
    assert verify(fake, digest, ARM).digest == digest
    assert layers_fetched(fake, [base, top]) == [1]


def attestation_index(fake, image_platform=("linux", "arm64"), attestation_first=False):
    """A child as BuildKit pushes it with provenance: an index over the image and an
    attestation manifest (platform unknown/unknown)."""
    image = fake.add_image("app", [layer_bytes({"bin/busybox": ARM64, "bin/uname": "busybox"})],
                           platform=image_platform, config=RUNS_UNAME)
    attestation = fake.add_image("app", [layer_bytes({"provenance.json": b"{}"})], platform=("unknown", "unknown"))
    entries = [{"digest": image, "platform": image_platform},
               {"digest": attestation, "platform": ("unknown", "unknown"),
                "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                "vnd.docker.reference.digest": image}}]
    return fake.add_index("app", entries[::-1] if attestation_first else entries), image


@pytest.mark.parametrize("attestation_first", [False, True], ids=["image-first", "attestation-first"])
def test_a_child_that_is_an_index_is_flattened_to_its_image_for_the_platform(attestation_first):
    fake = FakeRegistry()
    idx, image = attestation_index(fake, attestation_first=attestation_first)
    child = verify(fake, idx, ARM)
    assert child.digest == image and child.media_type == mediatypes.OCI_MANIFEST
    assert child.size == len(fake.manifests[("app", image)][0])


def test_an_index_without_the_platform_names_what_it_has_leaving_attestations_out():
    fake = FakeRegistry()
    idx, _ = attestation_index(fake, image_platform=("linux", "amd64"))
    with pytest.raises(VerificationFailed) as err:
        verify(fake, idx, ARM)
    assert str(err.value) == f"registry.test/app@{idx} is an index without linux/arm64 (it has: linux/amd64)"


@pytest.mark.parametrize("unreadable", [
    b"\x28\xb5\x2f\xfd" + os.urandom(200),  # a zstd frame
    os.urandom(300),                          # anything else
], ids=["zstd", "unknown"])
def test_a_layer_we_cannot_read_is_skipped_as_no_evidence(unreadable):
    """Top layer unreadable, the program is in the layer below: found there, arm64, right; the
    same below an x86 program: wrong. The unreadable layer neither passes nor fails an image."""
    fake = FakeRegistry()
    for program, ok in ((ARM64, True), (AMD64, False)):
        digest = fake.add_image("app", [layer_bytes({"bin/app": program}), unreadable],
                                platform=("linux", "arm64"), config={"Cmd": ["/bin/app"]},
                                layer_media_type="application/vnd.oci.image.layer.v1.tar+zstd")
        if ok:
            assert verify(fake, digest, ARM).digest == digest
        else:
            with pytest.raises(VerificationFailed, match="runs /bin/app built for linux/amd64"):
                verify(fake, digest, ARM)


def test_a_second_verification_of_the_same_layers_fetches_no_layer(own_cache):
    """Layer scans are cached by digest (in the user cache dir, here this test's own): once the
    learn stage kept the scans a verification returned, verifying the image again reads its
    manifest and config, and no layer."""
    from archfleet import learn

    fake = FakeRegistry()
    layers = [layer_bytes({"bin/busybox": ARM64}), layer_bytes({"bin/uname": "busybox"})]
    digest = fake.add_image("app", layers, platform=("linux", "arm64"), config=RUNS_UNAME)
    child = verify(fake, digest, ARM)
    assert layers_fetched(fake, layers) == [0, 1]
    learn.keep(learn.Lessons(scans=child.scans))
    fake.requests.clear()
    verify(fake, digest, ARM)
    assert layers_fetched(fake, layers) == []
    assert len(blob_gets(fake)) == 1  # the config
    assert list((own_cache / "archfleet" / "layers-v2").glob("sha256-*.json"))


def test_a_manifest_that_is_no_image_is_refused():
    fake = FakeRegistry()
    body = b'{"schemaVersion": 2, "mediaType": "application/vnd.example.thing+json"}'
    fake.manifests[("app", digest_of(body))] = (body, "application/vnd.example.thing+json")
    with pytest.raises(VerificationFailed, match="has media type 'application/vnd.example.thing\\+json', not an image"):
        verify(fake, digest_of(body), ARM)


def test_every_platform_field_counts_in_the_config_check():
    """arm/v6 asked, the config says arm/v7: a config mismatch (ELF cannot tell v6 from v7, so
    the config is the only check that can)."""
    fake = FakeRegistry()
    digest = fake.add_image("app", [layer_bytes({"bin/app": elf(40, 1)})], platform=("linux", "arm", "v7"),
                            config={"Cmd": ["/bin/app"]})
    with pytest.raises(VerificationFailed, match="requested linux/arm/v6 but the image pushed for it is linux/arm/v7"):
        verify(fake, digest, parse("linux/arm/v6"))
    assert verify(fake, digest, parse("linux/arm/v7")).digest == digest

