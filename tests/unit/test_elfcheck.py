from archfleet.elfcheck import LayerIndex, elf_arch

from images import elf, layer


def test_elf_machines():
    assert elf_arch(elf(62)) == "amd64"
    assert elf_arch(elf(3, 1)) == "386"
    assert elf_arch(elf(183)) == "arm64"
    assert elf_arch(elf(40, 1)) == "arm"
    assert elf_arch(elf(22, 2, False)) == "s390x"
    assert elf_arch(elf(21, 2, True)) == "ppc64le"
    assert elf_arch(b"#!/bin/sh\n" + b"\0" * 20) is None


def test_program_found_through_path_and_symlinks_top_layer_wins():
    idx = LayerIndex()
    idx.add_layer(layer({"bin/uname": "busybox"}))  # top layer: a relative symlink
    idx.add_layer(layer({"bin/busybox": elf(183), "usr/bin/other": elf(62)}))
    assert idx.program_arch("uname", ["PATH=/usr/sbin:/bin"]) == "arm64"
    assert idx.program_arch("/usr/bin/other", []) == "amd64"
    assert idx.program_arch("missing", []) is None


def test_whiteout_hides_lower_file():
    idx = LayerIndex()
    idx.add_layer(layer({"bin/.wh.tool": b""}))
    idx.add_layer(layer({"bin/tool": elf(62)}))
    assert idx.program_arch("/bin/tool", []) is None


def test_a_layer_scanned_once_is_not_fetched_again(tmp_path, monkeypatch):
    """The base layer is read for the first image only; the second image (same base, new top
    layer) fetches just its top layer, and still finds the program in the cached base. The scans
    are kept by the learn stage, from what verification returned: verification writes nothing."""
    import asyncio
    import hashlib
    import json

    from archfleet import index, layercache
    from archfleet.learn import Lessons, keep

    monkeypatch.setattr(layercache, "_dir", lambda: tmp_path / "layers")
    blobs = {}

    def put(data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    base = put(layer({"bin/busybox": elf(183), "bin/uname": "busybox"}).getvalue())
    fetched = []

    class Registry:
        async def get_blob(self, ref, digest):
            fetched.append(digest)
            return blobs[digest]

    config = {"config": {"Cmd": ["uname", "-m"], "Env": ["PATH=/bin"]}}
    for n in range(2):
        top = put(layer({f"round-{n}": b"x" * 100}).getvalue())
        program, arch, scans = asyncio.run(index.program_architecture(Registry(), None, {"layers": [base, top]},
                                                                      config))
        assert (program, arch) == ("uname", "arm64")
        assert [s.digest for s in scans] == [top["digest"], base["digest"]][:2 - n]  # the base only the first time
        if n == 0:
            assert not (tmp_path / "layers").exists()  # nothing written until the learn stage
        keep(Lessons(scans=scans))
    assert fetched.count(base["digest"]) == 1 and len(fetched) == 3
    assert json.loads((tmp_path / "layers" / f"sha256-{base['digest'][7:]}.json").read_text())["entries"]


def test_layer_cache_refuses_foreign_names_and_stays_bounded(tmp_path, monkeypatch):
    from archfleet import layercache

    monkeypatch.setattr(layercache, "_dir", lambda: tmp_path)
    monkeypatch.setattr(layercache, "MAX_ENTRIES", 3)
    layercache.store("sha256:../../etc/passwd", {"entries": {}, "whiteouts": []})
    assert layercache.load("sha256:../../etc/passwd") is None and list(tmp_path.iterdir()) == []
    for i in range(5):
        layercache.store(f"sha256:{i:064x}", {"entries": {}, "whiteouts": []})
    assert len(list(tmp_path.glob("*.json"))) == 3
    assert layercache.load(f"sha256:{4:064x}") == {"entries": {}, "whiteouts": []}


# Layer paths and whiteouts as the OCI image spec (layer.md) defines them: a merged view, top
# layer first. The right value is what `docker run` would find at that path.

def scan(files):
    from archfleet.elfcheck import scan_layer

    return scan_layer(layer(files))


def test_hidden_top_level_names_keep_their_dots():
    """'./.local/bin/app' is /.local/bin/app, not /local/bin/app (lstrip('./') ate the dot)."""
    got = scan({"./.local/bin/app": elf(183), "./local/bin/app": elf(62), ".profile": b"x", "./..hidden": b"y"})
    assert got["entries"]["/.local/bin/app"] == ["file", "arm64"]
    assert got["entries"]["/local/bin/app"] == ["file", "amd64"]
    assert "/.profile" in got["entries"] and "/..hidden" in got["entries"]
    idx = LayerIndex()
    idx.add_layer(layer({"./.local/bin/app": elf(183), "./local/bin/app": elf(62)}))
    assert idx.program_arch("/.local/bin/app", []) == "arm64"


def test_member_names_normalise_to_one_absolute_path():
    from archfleet.elfcheck import member_path

    assert [member_path(n) for n in ("./a/b", "a/b", "/a/b", "a/b/", "//a//b", "./../a/b", "./")] == \
        ["/a/b"] * 6 + ["/"]


def test_an_opaque_whiteout_hides_the_lower_layers_entries_of_that_directory_only():
    idx = LayerIndex()
    top = scan({"app/.wh..wh..opq": b"", "app/new": elf(62)})
    assert top["opaque"] == ["/app"] and top["whiteouts"] == []  # not a file named '.wh..opq'
    idx.add_scan(top)
    idx.add_layer(layer({"app/old": elf(183), "app/bin/tool": elf(183), "other/keep": elf(183)}))
    assert idx.program_arch("/app/new", []) == "amd64"  # this layer's own entries stay
    assert idx.program_arch("/app/old", []) is None
    assert idx.program_arch("/app/bin/tool", []) is None
    assert idx.program_arch("/other/keep", []) == "arm64"
    assert idx.elf_counts == {"amd64": 1, "arm64": 1}


def test_a_whited_out_directory_hides_everything_below_it():
    idx = LayerIndex()
    idx.add_layer(layer({"opt/.wh.app": b""}))
    idx.add_layer(layer({"opt/app/bin/run": elf(62), "opt/apparent": elf(62)}))
    assert idx.program_arch("/opt/app/bin/run", []) is None
    assert idx.program_arch("/opt/apparent", []) == "amd64"


def test_reserved_double_whiteout_names_are_not_whiteouts():
    """aufs' .wh..wh.* names are metadata, not whiteouts of '.wh.*' names; files under
    .wh..wh.plnk/ stay readable as hard-link targets (as moby's UnpackLayer keeps them)."""
    got = scan({".wh..wh.plnk/123.4": elf(62), ".wh..wh.aufs": b"", "bin/app": elf(62)})
    assert got["whiteouts"] == [] and got["opaque"] == []
    assert set(got["entries"]) == {"/bin/app", "/.wh..wh.plnk/123.4"}


def test_a_symlink_above_replaces_a_lower_directory_and_is_followed_in_the_middle_of_a_path():
    """A merged-/usr top layer: /bin -> usr/bin hides the lower /bin/sh; /bin/sh is reached
    through the link, in every component, as execve would."""
    idx = LayerIndex()
    idx.add_layer(layer({"bin": "usr/bin", "usr/bin/sh": elf(183)}))
    idx.add_layer(layer({"bin/sh": elf(62)}))
    assert idx.program_arch("/bin/sh", []) == "arm64"
    assert idx.program_arch("sh", ["PATH=/bin"]) == "arm64"
    assert idx.elf_counts == {"arm64": 1}


def test_a_symlink_loop_is_no_answer():
    idx = LayerIndex()
    idx.add_layer(layer({"a": "b", "b": "a"}))
    assert idx.program_arch("/a", []) is None
