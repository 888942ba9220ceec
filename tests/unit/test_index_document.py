"""The index document archfleet pushes (index.py ``assemble``) and how a platform is read back
from an image config or an index entry (``_platform_of``).

The index bytes are what its digest is computed from, and a tag points at that digest: the
same children must give the same bytes in every run and every archfleet version, so the bytes
of one known index are pinned here (L1 of the test audit: assembling twice in one process could
not fail).
"""

import pytest

from archfleet import mediatypes
from archfleet.index import _platform_of, assemble
from archfleet.model import ChildImage
from archfleet.platforms import parse
from archfleet.registry import sha256_digest

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
PINNED = (
    '{\n'
    '   "schemaVersion": 2,\n'
    '   "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",\n'
    '   "manifests": [\n'
    '      {\n'
    '         "mediaType": "application/vnd.docker.distribution.manifest.v2+json",\n'
    f'         "digest": "{D1}",\n'
    '         "size": 500,\n'
    '         "platform": {\n'
    '            "architecture": "amd64",\n'
    '            "os": "linux"\n'
    '         }\n'
    '      },\n'
    '      {\n'
    '         "mediaType": "application/vnd.docker.distribution.manifest.v2+json",\n'
    f'         "digest": "{D2}",\n'
    '         "size": 501,\n'
    '         "platform": {\n'
    '            "architecture": "arm",\n'
    '            "os": "linux",\n'
    '            "variant": "v7"\n'
    '         }\n'
    '      }\n'
    '   ]\n'
    '}\n'
)


def test_the_same_children_give_the_same_bytes_in_every_version():
    body, media_type = assemble([ChildImage(parse("linux/amd64"), D1, mediatypes.DOCKER_MANIFEST, 500),
                                 ChildImage(parse("linux/arm/v7"), D2, mediatypes.DOCKER_MANIFEST, 501)])
    assert body.decode() == PINNED and media_type == mediatypes.DOCKER_LIST
    assert sha256_digest(body) == sha256_digest(PINNED.encode())


def test_an_index_needs_children_and_one_per_platform():
    with pytest.raises(ValueError, match="^an index needs at least one child$"):
        assemble([])
    with pytest.raises(ValueError, match="^two children for linux/amd64$"):
        assemble([ChildImage(parse("linux/amd64"), D1, mediatypes.DOCKER_MANIFEST, 1),
                  ChildImage(parse("x86_64"), D2, mediatypes.DOCKER_MANIFEST, 1)])


@pytest.mark.parametrize("doc,platform", [
    ({"os": "linux", "architecture": "arm64"}, "linux/arm64"),
    ({"os": "linux", "architecture": "arm", "variant": "v7"}, "linux/arm/v7"),
    ({"os": "linux", "architecture": "arm", "variant": "v6"}, "linux/arm/v6"),  # not linux/arm's v7
    ({"os": "linux", "architecture": "arm64", "variant": ""}, "linux/arm64"),
    ({"os": "linux", "architecture": "aarch64"}, "linux/arm64"),  # normalised as containerd does
    ({"architecture": "amd64"}, None),                             # no OS
    ({"os": "linux"}, None),                                       # no architecture
    ({"os": "unknown", "architecture": "unknown"}, None),          # BuildKit's attestation entries
    ({"os": "linux", "architecture": "vax"}, None),                # nothing archfleet knows
])
def test_a_platform_is_read_from_os_architecture_and_variant(doc, platform):
    got = _platform_of(doc)
    assert (str(got) if got else None) == platform
