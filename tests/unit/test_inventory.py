import os

import pytest

from pathlib import Path

from archfleet.errors import UsageError
from archfleet.plugins.ssh import KEYS as SSH_KEYS
from archfleet.inventory import find_nodes_file, load_nodes_file

GOOD = """\
# lab
[nodes.local]
enabled = false

[nodes.pi4]
host = "192.0.2.10"
port = 2222
user = "builder"
arch = "aarch64"
max_builds = 1
labels = { site = "lab" }
"""


def write(tmp_path, text):
    p = tmp_path / "nodes.toml"
    p.write_text(text)
    return p


def test_good_file(tmp_path):
    nodes = load_nodes_file(write(tmp_path, GOOD), {"ssh": SSH_KEYS})
    local, pi = nodes
    assert local.transport == "local" and not local.enabled
    assert (pi.name, str(pi.arch), pi.max_builds) == ("pi4", "linux/arm64", 1)
    # the transport's own keys, validated with the keys its plugin declares, in the settings
    assert (pi.setting("host"), pi.setting("port"), pi.setting("user")) == ("192.0.2.10", 2222, "builder")
    assert pi.labels == (("site", "lab"),) and pi.source.endswith("nodes.toml:5")
    assert pi.setting("host_key_policy") == "strict"


@pytest.mark.parametrize("text,line,needle", [
    ('[nodes.a]\nhost = "h"\nport = "22"\n', 3, "key 'port': expected an integer 1-65535"),
    ('[nodes.a]\nhost = "h"\nport = 70000\n', 3, "expected an integer 1-65535"),
    ('[nodes.a]\nhost = "h"\ncolour = "red"\n', 3, "key 'colour': unknown key"),
    ('[nodes.a]\nuser = "x"\n', 1, "missing 'host'"),
    ('[nodes.a]\nhost = "h"\n\n[nodes.a]\nhost = "i"\n', 4, "defined twice"),
    ('[nodes.a]\nhost = "h"\nmax_builds = 0\n', 3, "key 'max_builds'"),
    ('[nodes.a]\nhost = "h"\nenabled = "yes"\n', 3, "key 'enabled': expected true or false"),
    ('[nodes.a]\nhost = "h"\nidentity = "/nonexistent/key"\n', 3, "cannot read file"),
    ('[nodes.a]\nhost = "h"\narch = "linux/arm65"\n', 3, "key 'arch'"),
    ('[nodes.a]\nhost = "$(id)"\n', 2, "key 'host'"),
    ('[nodes.a]\nhost = "-oProxyCommand=x"\n', 2, "key 'host'"),
    ('[nodes."a;b"]\nhost = "h"\n', 1, "node 'a;b'"),
    ('[nodes.a]\nhost = "h"\nhost_key_policy = "none"\n', 3, "strict or accept-new"),
    ('[nodes.local]\nhost = "h"\n', 2, "the local node takes only these"),
    ('[nodes.a]\nhost = "h"\nport = \n', 3, "not valid TOML"),
    ('[other]\nx = 1\n', 1, "unknown top-level key"),
])
def test_errors_name_file_line_and_key(tmp_path, text, line, needle):
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as err:
        load_nodes_file(path, {"ssh": SSH_KEYS})
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert needle in message
    assert "\n" not in message


def test_lookup_order(tmp_path, monkeypatch):
    """--nodes, then $ARCHFLEET_NODES, then the user config dir; ./nodes.toml only when named."""
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(""), b.write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("ARCHFLEET_NODES", str(b))
    assert find_nodes_file(str(a)) == a
    assert find_nodes_file(None) == b
    monkeypatch.delenv("ARCHFLEET_NODES")
    (tmp_path / "nodes.toml").write_text("")
    assert find_nodes_file(None) is None  # the working directory's file is not read implicitly
    assert find_nodes_file("nodes.toml") == Path("nodes.toml")
    user = tmp_path / "config" / "archfleet" / "nodes.toml"
    user.parent.mkdir(parents=True)
    user.write_text("")
    assert find_nodes_file(None) == user
    with pytest.raises(UsageError, match="--nodes: /nope: no such file"):
        find_nodes_file("/nope")


# --- which files are trusted (finding 3) ------------------------------------------------------

from archfleet.inventory import ignored_local_file, make_config  # noqa: E402

HOSTILE = '[nodes.local]\nengine_cli = "./tools/docker"\ndocker_host = "tcp://192.0.2.66:2375"\n'


def test_working_directory_nodes_toml_is_ignored_and_said_so(tmp_path, monkeypatch):
    """A checkout's nodes.toml must not pick the engine CLI or the daemon: it is not read, and one
    line says how to use it if it is trusted."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("ARCHFLEET_NODES", raising=False)
    (tmp_path / "nodes.toml").write_text(HOSTILE)
    notes = []
    config = make_config(keys={"ssh": SSH_KEYS}, note=notes.append)
    assert config.nodes_file is None and config.file_nodes == ()
    assert notes == ["./nodes.toml is not read unless you name it (it can run programs): pass --nodes nodes.toml "
                     "or set $ARCHFLEET_NODES if you trust it"]
    named = make_config("nodes.toml", keys={"ssh": SSH_KEYS}, note=notes.append)  # named: trusted, and no note
    assert named.file_node("local").docker_host == "tcp://192.0.2.66:2375" and len(notes) == 1


def test_comment_only_nodes_toml_needs_no_note(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nodes.toml").write_text("# [nodes.pi4]\n# host = 'x'\n")
    assert ignored_local_file(None) is None


@pytest.mark.parametrize("kind", ["fifo", "dir"])
def test_a_special_nodes_toml_in_the_working_directory_neither_hangs_nor_crashes(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    os.mkfifo("nodes.toml") if kind == "fifo" else os.mkdir("nodes.toml")
    assert ignored_local_file(None) is None


def test_relative_engine_cli_is_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    nodes = load_nodes_file(write(tmp_path, HOSTILE), {"ssh": SSH_KEYS})
    assert nodes[0].engine_cli == str(tmp_path / "tools" / "docker")
    bare = load_nodes_file(write(tmp_path, '[nodes.local]\nengine_cli = "docker"\n'), {"ssh": SSH_KEYS})
    assert bare[0].engine_cli == "docker"  # a command name is looked up on PATH, as before


@pytest.mark.parametrize("mode,owner,group,needle", [
    (0o666, None, None, "anyone can write (mode 0666)"),
    (0o644, 65534, None, "owned by uid 65534 (not you or root)"),
    (0o664, None, 65534, "its group can write (mode 0664, gid 65534)"),
])
def test_files_others_can_change_are_refused(tmp_path, mode, owner, group, needle):
    path = write(tmp_path, GOOD)
    if owner is not None or group is not None:
        if os.geteuid() != 0:
            pytest.skip("chown needs root")
        os.chown(path, -1 if owner is None else owner, -1 if group is None else group)
    path.chmod(mode)
    with pytest.raises(UsageError) as err:
        load_nodes_file(path, {"ssh": SSH_KEYS})
    assert str(err.value) == (f"{path}: refusing a nodes file {needle} (it can run programs); "
                              "chmod go-w it or copy it to a file of your own")


def test_group_writable_in_a_user_private_group_is_fine(tmp_path):
    """Debian's umask 002 with user-private groups: the group is only the owner (as OpenSSH allows)."""
    import grp
    import pwd

    me = pwd.getpwuid(os.geteuid())
    if grp.getgrgid(me.pw_gid).gr_name != me.pw_name:
        pytest.skip("the user's primary group is not a private group here")
    path = write(tmp_path, GOOD)
    os.chown(path, -1, me.pw_gid)
    path.chmod(0o664)
    assert len(load_nodes_file(path, {"ssh": SSH_KEYS})) == 2


def test_non_regular_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        load_nodes_file(fifo, {"ssh": SSH_KEYS})  # O_NONBLOCK: opening a FIFO with no writer does not hang
    with pytest.raises(UsageError, match="not a regular file"):
        load_nodes_file(tmp_path, {"ssh": SSH_KEYS})


# --- encodings and values (findings 16, 18) ----------------------------------------------------

def test_not_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "nodes.toml"
    path.write_bytes(b'[nodes.a]\nhost = "h"\n# caf\xe9\n')
    with pytest.raises(UsageError) as err:
        load_nodes_file(path, {"ssh": SSH_KEYS})
    assert str(err.value) == f"{path}:3: not UTF-8 at byte 26; TOML files are UTF-8"


def test_a_bom_is_accepted(tmp_path):
    path = tmp_path / "nodes.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert len(load_nodes_file(path, {"ssh": SSH_KEYS})) == 2


@pytest.mark.parametrize("value,ok", [
    ("unix:///var/run/docker.sock", True),
    ("tcp://10.0.0.5:2375", True),
    ("tcp://[fd00::5]:2376", True),
    ("tcp://builder.lan:2375", True),
    ("tcp://10.0.0.5", False),          # no port: it would fail only when the build connects
    ("tcp://10.0.0.5:", False),
    ("tcp://10.0.0.5:70000", False),
    ("tcp://10.0.0.5:0", False),
    ("unix://var/run/docker.sock", False),  # not an absolute path
    ("ssh://builder", False),
    ("tcp://a b:1", False),
])
def test_docker_host_is_unix_path_or_tcp_host_port(tmp_path, value, ok):
    text = f'[nodes.a]\nhost = "h"\ndocker_host = "{value}"\n'
    if ok:
        assert load_nodes_file(write(tmp_path, text), {"ssh": SSH_KEYS})[0].docker_host == value
    else:
        with pytest.raises(UsageError, match=r":3: node 'a' key 'docker_host': expected unix:///absolute/path "
                                             r"or tcp://host:port"):
            load_nodes_file(write(tmp_path, text), {"ssh": SSH_KEYS})


@pytest.mark.parametrize("text,line,needle", [
    ('[nodes.a]\nhost = "h"\nuser = "bob\\n"\n', 3, "key 'user': control characters are not allowed"),
    ('[nodes."a\\n"]\nhost = "h"\n', 1, "names are letters"),
    ('[nodes.a]\nhost = "h\\n"\n', 2, "key 'host': control characters"),
    ('[nodes.a]\nhost = "h"\nidentity = "k\\u0000"\n', 3, "key 'identity': control characters"),
    ('[nodes.a]\nhost = "h"\nlabels = { "x\\ty" = "v" }\n', 3, "key 'labels': expected a table of strings"),
    ('[nodes.a]\nhost = "h"\narch = "darwin/arm64"\n', 3, "archfleet builds Linux images only"),
])
def test_values_with_control_characters_or_other_oses(tmp_path, text, line, needle):
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as err:
        load_nodes_file(path, {"ssh": SSH_KEYS})
    assert str(err.value).startswith(f"{path}:{line}: ") and needle in str(err.value)


def test_deeply_nested_toml_is_one_line(tmp_path):
    path = write(tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(UsageError, match="not valid TOML: nested too deeply"):
        load_nodes_file(path, {"ssh": SSH_KEYS})
