"""-o and --load (archfleet.outputs): buildx's flag syntax and layout, and the file system an
image's layers make, merged as an overlay would (whiteouts, opaque directories, links)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from archfleet.errors import UsageError
from archfleet.model import BuildRequest, Output
from archfleet.outputs import (check_outputs, load_platform, parse_output, platform_dir, prefix_for, tag_names,
                               tree_from_archive, write_tree)
from archfleet.platforms import parse as P


def _tar(entries) -> tarfile.TarFile:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            elif isinstance(content, tuple):  # ("link", target) hard link
                info.type, info.linkname = tarfile.LNKTYPE, content[1]
                t.addfile(info)
            else:
                info.size = len(content)
                t.addfile(info, io.BytesIO(content))
    buf.seek(0)
    return tarfile.open(fileobj=buf, mode="r:")


def _files(path: Path) -> dict[str, bytes | None]:
    with tarfile.open(path) as t:
        return {i.name: (t.extractfile(i).read() if i.isfile() else None) for i in t}


def test_flag_syntax_is_buildx_s_and_other_types_say_what_to_use(tmp_path):
    assert parse_output(f"type=local,dest={tmp_path}/out") == Output("local", tmp_path / "out")
    assert parse_output(f"type=tar,dest={tmp_path}/o.tar") == Output("tar", tmp_path / "o.tar")
    assert parse_output(str(tmp_path / "bare")) == Output("local", tmp_path / "bare")
    for text, says in [("type=registry", "use --push"), ("type=docker", "use --load"), ("type=oci,dest=x", "not local or tar"),
                       ("type=local", "dest=DIR"), ("type=tar,dest=-", "not to stdout"),
                       (f"type=local,dest={tmp_path}/no/such/dir", "does not exist"),
                       ("type=local,dest=x,compression=gzip", "unknown key 'compression'")]:
        with pytest.raises(UsageError, match=says):
            parse_output(text)
    o = Output("local", tmp_path / "o")
    assert "named twice" in check_outputs([o, o])[0]


def test_several_platforms_go_under_os_arch_variant_one_at_the_top():
    """BuildKit's local/tar exporters split a multi-platform result as linux_arm_v7/ etc."""
    assert platform_dir(P("linux/arm/v7")) == "linux_arm_v7"
    two = BuildRequest(context=Path("."), dockerfile=Path("D"), platforms=(P("linux/amd64"), P("linux/arm64")))
    one = BuildRequest(context=Path("."), dockerfile=Path("D"), platforms=(P("linux/arm64"),))
    assert prefix_for(two, P("linux/arm64")) == "linux_arm64/" and prefix_for(one, P("linux/arm64")) == ""
    # --load: the one platform built, else the local engine's own
    assert load_platform(one, P("linux/amd64")) == P("linux/arm64")
    assert load_platform(two, P("linux/amd64")) == P("linux/amd64")
    assert load_platform(two, P("linux/s390x")) is None
    assert tag_names(["docker.io/library/app:1", "127.0.0.1:5000/x/app"]) == ["app:1", "127.0.0.1:5000/x/app:latest"]


def test_layers_merge_as_an_overlay_whiteouts_opaque_dirs_and_replaced_links(tmp_path):
    bottom = _tar([("etc", None), ("etc/a", b"a1"), ("etc/b", b"b1"), ("opt", None), ("opt/x", b"x"),
                   ("bin", None), ("bin/tool", b"tool"), ("bin/alias", ("link", "bin/tool")), ("gone", None),
                   ("gone/f", b"f")])
    top = _tar([("etc/a", b"a2"), ("etc/.wh.b", b""), ("opt/.wh..wh..opq", b""), ("opt/y", b"y"),
                ("bin/tool", b"tool2"), ("gone", b"now a file")])
    out = tmp_path / "tree.tar"
    write_tree([bottom, top], out, "linux_amd64/")
    got = _files(out)
    assert got == {"linux_amd64/etc": None, "linux_amd64/etc/a": b"a2", "linux_amd64/opt": None,
                   "linux_amd64/opt/y": b"y", "linux_amd64/bin": None, "linux_amd64/bin/tool": b"tool2",
                   "linux_amd64/bin/alias": b"tool", "linux_amd64/gone": b"now a file"}


def test_a_docker_save_archive_gives_its_image_s_files(tmp_path):
    """The export's manifest.json names the layers bottom first (docker save / podman save)."""
    def layer(entries) -> bytes:
        return _tar(entries).fileobj.getvalue()

    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as t:
        for name, data in [("manifest.json", json.dumps([{"Layers": ["l1/layer.tar", "l2/layer.tar"]}]).encode()),
                           ("l1/layer.tar", layer([("hello", b"v1"), ("keep", b"k")])),
                           ("l2/layer.tar", layer([("hello", b"v2")]))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    tree_from_archive(archive, tmp_path / "tree.tar")
    assert _files(tmp_path / "tree.tar") == {"hello": b"v2", "keep": b"k"}


def test_another_output_type_is_named_before_its_keys():
    """Rule: -o's type is checked before its keys: `type=image,name=foo` says to use --load, not
    that `name` is unknown (it is image's key)."""
    import pytest

    from archfleet.errors import UsageError
    from archfleet.outputs import parse_output

    with pytest.raises(UsageError, match=r"^--output 'type=image,name=foo': to put the image in the local engine, use --load$"):
        parse_output("type=image,name=foo")
    with pytest.raises(UsageError, match=r"^--output 'type=local,dest=x,push=true': unknown key 'push' \(type, dest\)$"):
        parse_output("type=local,dest=x,push=true")
