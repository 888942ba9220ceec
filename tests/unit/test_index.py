import json
import os

import pytest

from archfleet import mediatypes
from archfleet.index import assemble
from archfleet.model import ChildImage
from archfleet.platforms import parse

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def test_docker_children_make_a_docker_manifest_list():
    body, mt = assemble([ChildImage(parse("linux/amd64"), D1, mediatypes.DOCKER_MANIFEST, 500),
                         ChildImage(parse("linux/arm/v7"), D2, mediatypes.DOCKER_MANIFEST, 501)])
    doc = json.loads(body)
    assert mt == doc["mediaType"] == mediatypes.DOCKER_LIST
    assert doc["schemaVersion"] == 2
    assert doc["manifests"][1] == {"mediaType": mediatypes.DOCKER_MANIFEST, "digest": D2, "size": 501,
                                   "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}}


def test_any_oci_child_makes_an_oci_index():
    _, mt = assemble([ChildImage(parse("linux/amd64"), D1, mediatypes.DOCKER_MANIFEST, 1),
                      ChildImage(parse("linux/arm64"), D2, mediatypes.OCI_MANIFEST, 1)])
    assert mt == mediatypes.OCI_INDEX


ASSEMBLE = """
import sys
from archfleet import mediatypes
from archfleet.index import assemble
from archfleet.model import ChildImage
from archfleet.platforms import parse
children = [ChildImage(parse(p), d, mt, int(n)) for p, d, mt, n in (a.split(",") for a in sys.argv[1:])]
sys.stdout.buffer.write(assemble(children)[0])
"""


def test_assembly_is_byte_for_byte_the_same_in_another_process():
    """The index digest is what the tags point at: the same children give the same bytes in a
    fresh interpreter with other hash seeds (set and dict order, platform objects made anew).
    The children are listed in the order given: the pipeline gives them in --platform order
    (test_publish_flow checks that completion order does not change it)."""
    import subprocess
    import sys

    children = [ChildImage(parse("linux/arm/v7"), D2, mediatypes.OCI_MANIFEST, 501),
                ChildImage(parse("linux/amd64"), D1, mediatypes.DOCKER_MANIFEST, 500)]
    here = assemble(children)[0]
    args = [f"{c.platform},{c.digest},{c.media_type},{c.size}" for c in children]
    for seed in ("0", "1", "4242"):
        there = subprocess.run([sys.executable, "-c", ASSEMBLE, *args], capture_output=True, check=True,
                               env={**os.environ, "PYTHONHASHSEED": seed}, timeout=60).stdout
        assert there == here
    assert [m["platform"]["architecture"] for m in json.loads(here)["manifests"]] == ["arm", "amd64"]
    reordered = assemble(children[::-1])[0]
    assert reordered != here and sorted(json.loads(reordered)["manifests"], key=str) == \
        sorted(json.loads(here)["manifests"], key=str)


def test_duplicate_platform_refused():
    with pytest.raises(ValueError):
        assemble([ChildImage(parse("linux/amd64"), D1, mediatypes.DOCKER_MANIFEST, 1),
                  ChildImage(parse("x86_64"), D2, mediatypes.DOCKER_MANIFEST, 1)])


# -- pushing the index to several repositories (finding 29, fifth bullet) ----------------------

import asyncio
import base64

import attrs
import httpx

from archfleet.errors import RegistryRefused
from archfleet.index import push_index
from archfleet.reference import parse_reference
from archfleet.registry import RegistryClient

from fakeregistry import FakeRegistry, digest_of

HOST = "registry.test"
CONFIG = {"auths": {HOST: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}


def _two_children(fake):
    out = []
    for arch in ("amd64", "arm64"):
        digest = fake.add_image("src", [os.urandom(64), os.urandom(64)], platform=("linux", arch))
        body = fake.manifests[("src", digest)][0]
        out.append(ChildImage(parse(f"linux/{arch}"), digest, mediatypes.OCI_MANIFEST, len(body)))
    return out


def test_tags_move_only_after_every_repository_has_every_child_and_the_index():
    fake = FakeRegistry(HOST)
    children = _two_children(fake)
    tags = [parse_reference(f"{HOST}/a:1"), parse_reference(f"{HOST}/b:1"), parse_reference(f"{HOST}/c:2"),
            parse_reference(f"{HOST}/a:latest")]

    async def go():
        async with RegistryClient(transport=httpx.MockTransport(fake), docker_config=CONFIG) as c:
            return await push_index(c, parse_reference(f"{HOST}/src"), children, tags)

    digest, body, _ = asyncio.run(go())
    tag_moves = [i for i, (kind, _, ref) in enumerate(fake.events) if kind == "manifest" and not ref.startswith("sha256:")]
    content = [i for i, (kind, _, ref) in enumerate(fake.events) if kind == "blob" or ref.startswith("sha256:")]
    assert len(tag_moves) == 4 and max(content) < min(tag_moves)
    for repo in ("a", "b", "c"):
        assert (repo, digest) in fake.manifests
        assert all((repo, child.digest) in fake.manifests for child in children)
    assert fake.manifests[("c", "2")][0] == body == fake.manifests[("a", "latest")][0]


def test_a_repository_that_refuses_the_children_leaves_every_tag_untouched():
    fake = FakeRegistry(HOST)
    children = _two_children(fake)
    old = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []}).encode()
    fake.manifests[("a", "1")] = (old, mediatypes.OCI_INDEX)

    def handler(request):
        if request.method in ("POST", "PUT", "PATCH") and request.url.path.startswith("/v2/c/"):
            return httpx.Response(403, json={"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]})
        return fake(request)

    async def go():
        async with RegistryClient(transport=httpx.MockTransport(handler), docker_config=CONFIG) as c:
            await push_index(c, parse_reference(f"{HOST}/src"), children,
                             [parse_reference(f"{HOST}/a:1"), parse_reference(f"{HOST}/c:1")])

    with pytest.raises(RegistryRefused, match="denied"):
        asyncio.run(go())
    assert fake.manifests[("a", "1")][0] == old  # tag a:1 did not move
    assert ("c", "1") not in fake.manifests


def test_a_tag_refused_after_others_moved_says_which_moved():
    fake = FakeRegistry(HOST)
    children = _two_children(fake)

    def handler(request):
        if request.method == "PUT" and request.url.path == "/v2/src/manifests/2":
            return httpx.Response(400, json={"errors": [{"code": "TAG_INVALID", "message": "tag invalid"}]})
        return fake(request)

    async def go():
        async with RegistryClient(transport=httpx.MockTransport(handler), docker_config=CONFIG) as c:
            await push_index(c, parse_reference(f"{HOST}/src"), children,
                             [parse_reference(f"{HOST}/src:1"), parse_reference(f"{HOST}/src:2")])

    from archfleet.errors import RegistryError

    with pytest.raises(RegistryError) as err:
        asyncio.run(go())
    assert "already under registry.test/src:1" in str(err.value) and "not under registry.test/src:2" in str(err.value)


def test_stage_index_moves_no_tag_and_move_tags_moves_them_all():
    from archfleet.index import move_tags, stage_index

    fake = FakeRegistry(HOST)
    children = _two_children(fake)
    tags = [parse_reference(f"{HOST}/a:1"), parse_reference(f"{HOST}/src:1")]

    async def go():
        async with RegistryClient(transport=httpx.MockTransport(fake), docker_config=CONFIG) as c:
            got = await stage_index(c, parse_reference(f"{HOST}/src"), children, tags)
            staged = {key for key in fake.manifests if not key[1].startswith("sha256:")}
            await move_tags(c, tags, got.body, got.media_type)
            return got.digest, staged

    digest, staged = asyncio.run(go())
    assert staged == set()  # staging touched no tag
    assert {("a", digest), ("src", digest)} <= set(fake.manifests)
    assert fake.manifests[("a", "1")][0] == fake.manifests[("src", "1")][0] == fake.manifests[("a", digest)][0]


# -- annotations, attestations, child tags (issue 15) ----------------------------------------------


def test_annotations_go_on_the_index_and_on_the_named_descriptors_and_make_it_oci():
    """buildx's places: index: on the index, manifest-descriptor[P]: on P's entry only."""
    from archfleet.model import Annotation

    children = [ChildImage(parse("linux/amd64"), D1, mediatypes.DOCKER_MANIFEST, 1),
                ChildImage(parse("linux/arm64"), D2, mediatypes.DOCKER_MANIFEST, 1)]
    body, mt = assemble(children, [Annotation("index", "org.opencontainers.image.title", "t"),
                                   Annotation("manifest-descriptor", "lane", "slow", parse("linux/arm64")),
                                   Annotation("manifest", "ignored.here", "x")])
    doc = json.loads(body)
    assert mt == doc["mediaType"] == mediatypes.OCI_INDEX
    assert doc["annotations"] == {"org.opencontainers.image.title": "t"}
    assert "annotations" not in doc["manifests"][0] and doc["manifests"][1]["annotations"] == {"lane": "slow"}
    assert assemble(children, [Annotation("manifest", "k", "v")])[1] == mediatypes.DOCKER_LIST  # nothing for the list


def test_attestations_follow_every_child_in_the_index_as_written():
    att = {"mediaType": mediatypes.OCI_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 5,
           "annotations": {"vnd.docker.reference.digest": D1, "vnd.docker.reference.type": "attestation-manifest"},
           "platform": {"architecture": "unknown", "os": "unknown"}}
    children = [ChildImage(parse("linux/amd64"), D1, mediatypes.OCI_MANIFEST, 1, attestations=(json.dumps(att),)),
                ChildImage(parse("linux/arm64"), D2, mediatypes.OCI_MANIFEST, 1)]
    doc = json.loads(assemble(children)[0])
    assert [m["digest"] for m in doc["manifests"]] == [D1, D2, att["digest"]] and doc["manifests"][2] == att


def test_child_tags_move_after_staging_before_the_tags_in_every_repository():
    """--child-tags: each child also gets its tag in every -t tag's repository, moved with the tags
    (after verification), before the -t tags; nothing moves while staging."""
    from archfleet.index import move_tags, stage_index

    fake = FakeRegistry(HOST)
    children = [attrs.evolve(c, repository=f"{HOST}/src") for c in _two_children(fake)]
    tags = [parse_reference(f"{HOST}/src:1"), parse_reference(f"{HOST}/a:2")]

    async def go():
        async with RegistryClient(transport=httpx.MockTransport(fake), docker_config=CONFIG) as c:
            staged = await stage_index(c, parse_reference(f"{HOST}/src"), children, tags,
                                       child_tags="{tag}-{arch}")
            moved = [e for e in fake.events if e[0] == "manifest" and not e[2].startswith("sha256:")]
            await move_tags(c, tags, staged.body, staged.media_type, first=staged.child_tags)
            return staged, moved

    staged, moved_while_staging = asyncio.run(go())
    assert moved_while_staging == []
    order = [(repo, ref) for kind, repo, ref in fake.events if kind == "manifest" and not ref.startswith("sha256:")]
    assert order == [("src", "1-amd64"), ("src", "1-arm64"), ("a", "2-amd64"), ("a", "2-arm64"),
                     ("src", "1"), ("a", "2")]
    for repo, tag, child in (("src", "1-amd64", children[0]), ("a", "2-arm64", children[1])):
        assert digest_of(fake.manifests[(repo, tag)][0]) == child.digest
