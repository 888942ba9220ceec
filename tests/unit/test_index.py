import json

import pytest

from archfleet import mediatypes
from archfleet.index import assemble
from archfleet.model import ChildImage
from archfleet.platforms import parse
from archfleet.registry import sha256_digest

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


def test_assembly_is_deterministic_so_the_digest_is():
    children = [ChildImage(parse("linux/amd64"), D1, mediatypes.DOCKER_MANIFEST, 1)]
    assert sha256_digest(assemble(children)[0]) == sha256_digest(assemble(children)[0])


def test_duplicate_platform_refused():
    with pytest.raises(ValueError):
        assemble([ChildImage(parse("linux/amd64"), D1, mediatypes.DOCKER_MANIFEST, 1),
                  ChildImage(parse("x86_64"), D2, mediatypes.DOCKER_MANIFEST, 1)])
