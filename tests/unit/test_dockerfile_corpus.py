"""The Dockerfile corpus (issue 13, item 4): the shapes real multi-arch projects use, each
labelled in tests/unit/dockerfiles/labels.toml with the options archfleet must offer for
linux/arm64 and linux/s390x, and why.

Rule checked: the strategies offered follow from where BuildKit runs each stage
(docs/concepts.md, "Which Dockerfiles cross-compile"): a stage on ``$BUILDPLATFORM`` (however
spelled) or pinned to a node's own platform gives ``cross`` there; a target stage that RUNs
needs the target's CPU (``native``) or QEMU (``qemu``, or ``cross`` for the blend); a pinned
stage that RUNs keeps out the nodes that can neither run nor emulate its platform. Where a
label rests on a rule that could be doubted, the entry's ``lab`` names the test in
tests/integration/test_dockerfile_shapes.py that built the shape with BuildKit."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from archfleet.dockerfile import DockerfileError, analyse
from archfleet.model import BuildRequest, NodeFacts, NodeSpec
from archfleet.platforms import parse
from archfleet.plugins import cross, native, qemu

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "dockerfiles"
LABELS = tomllib.loads((CORPUS / "labels.toml").read_text())
SHAPES = HERE.parent / "integration" / "test_dockerfile_shapes.py"

AMD, ARM, S390X = parse("linux/amd64"), parse("linux/arm64"), parse("linux/s390x")
EMULATED = tuple(parse(p) for p in ("linux/arm64", "linux/arm/v7", "linux/arm/v6", "linux/s390x", "linux/ppc64le",
                                    "linux/riscv64"))
LOCAL = NodeFacts(NodeSpec("local"), True, native=AMD.native_also(), emulated=EMULATED, builder="buildkit",
                  engine_cli=["docker"], cpus=2)
ARM_NODE = NodeFacts(NodeSpec("arm", transport="ssh"), True, native=ARM.native_also(), builder="buildkit",
                     engine_cli=["docker"], cpus=2)


def request(name: str, entry: dict) -> BuildRequest:
    return BuildRequest(CORPUS, CORPUS / entry.get("file", f"{name}.Dockerfile"), [ARM, S390X],
                        target=entry.get("target"), build_args=entry.get("build_args", {}))


def offered(req: BuildRequest, platform) -> set[str]:
    return {str(o) for plugin in (native, qemu, cross)
            for o in plugin.archfleet_offer(platform, req, (LOCAL, ARM_NODE))}


def test_the_corpus_has_forty_dockerfiles_each_labelled_with_why():
    files = {p.name for p in CORPUS.glob("*.Dockerfile")}
    used = {entry.get("file", f"{name}.Dockerfile") for name, entry in LABELS.items()}
    assert len(files) >= 40
    assert files == used  # every file labelled, every label's file there
    for name, entry in LABELS.items():
        assert entry.get("why"), name
        assert ("error" in entry) != ("arm64" in entry and "s390x" in entry), name


def test_the_corpus_holds_the_encodings_and_directives_asked_for():
    raw = {p.name: p.read_bytes() for p in CORPUS.glob("*.Dockerfile")}
    assert any(b.startswith(b"\xef\xbb\xbf") for b in raw.values())  # a byte-order mark
    assert any(b"\r\n" in b for b in raw.values())  # CRLF line ends
    assert any(b"# syntax=" in b for b in raw.values()) and any(b"# escape=`" in b for b in raw.values())
    assert any(b"<<EOF" in b for b in raw.values())  # heredocs
    assert any("target" in e for e in LABELS.values())  # --target selecting a test stage


@pytest.mark.parametrize("name", sorted(n for n, e in LABELS.items() if "error" not in e))
def test_the_offers_are_the_labelled_ones(name):
    entry = LABELS[name]
    req = request(name, entry)
    got = {"arm64": offered(req, ARM), "s390x": offered(req, S390X)}
    want = {"arm64": set(entry["arm64"]), "s390x": set(entry["s390x"])}
    assert got == want, f"{name}: {entry['why']}\n{analyse(req).describe()}"


@pytest.mark.parametrize("name", sorted(n for n, e in LABELS.items() if "error" in e))
def test_a_file_buildkit_refuses_is_one_line_naming_file_and_line(name):
    entry = LABELS[name]
    with pytest.raises(DockerfileError) as err:
        analyse(request(name, entry))
    line = str(err.value)
    assert line.startswith(f"{CORPUS / entry.get('file', f'{name}.Dockerfile')}:") and "\n" not in line
    assert entry["error"] in line and err.value.exit_code == 2


def test_every_lab_check_named_exists():
    text = SHAPES.read_text()
    for name, entry in LABELS.items():
        if "lab" in entry:
            assert f"def {entry['lab']}(" in text, name
