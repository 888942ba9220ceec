"""nodes.toml, rule by rule (docs/nodes.md): the exact line each mistake prints, the defaults a
node gets when a key is left out, and paths in the file being relative to the file.

The error lines are compared whole: nodes.md promises that every error names ``file:line``,
the node and the key, and says what is expected; a test that only looked for a word would
pass with the key, the line or the expectation gone.
"""

import os

import pytest

from archfleet.errors import UsageError
from archfleet.inventory import _private_group, load_nodes_file

SSH_KEYS = ("arch, docker_host, enabled, engine, engine_cli, host, host_key_policy, identity, known_hosts, "
            "labels, max_builds, port, transport, user")


def nodes_file(tmp_path, text):
    path = tmp_path / "nodes.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def error(tmp_path, text) -> str:
    path = nodes_file(tmp_path, text)
    with pytest.raises(UsageError) as err:
        load_nodes_file(path)
    return str(err.value).replace(str(path), "F")


@pytest.mark.parametrize("text,line", [
    ('[nodes."-a"]\nhost = "h"\n',
     "F:1: node '-a': names are letters, digits, '.', '_' and '-' (at most 63, not starting with a symbol)"),
    ("[nodes]\na = 1\n", "F:1: node 'a': must be a table ([nodes.NAME])"),
    ('[nodes.a]\nhost = "h"\nport = true\n', "F:3: node 'a' key 'port': expected an integer 1-65535, got True"),
    ('[nodes.a]\nhost = "h"\nport = "22"\n',
     "F:3: node 'a' key 'port': expected an integer 1-65535, got str '22'"),
    ('[nodes.a]\nhost = "h"\nuser = 7\n', "F:3: node 'a' key 'user': expected a user name, got int 7"),
    ('[nodes.a]\nhost = "h"\ncolour = "red"\n', f"F:3: node 'a' key 'colour': unknown key (known: {SSH_KEYS})"),
    ('[nodes.local]\nhost = "h"\n',
     "F:2: node 'local' key 'host': unknown key (known: docker_host, enabled, engine_cli, labels, max_builds); "
     "the local node takes only these"),
    ('[nodes.a]\nhost = "h"\nmax_builds = 65\n', "F:3: node 'a' key 'max_builds': expected an integer 1-64, got 65"),
    ('[nodes.a]\nhost = "h"\nengine_cli = " "\n', "F:3: node 'a' key 'engine_cli': expected a path, got ' '"),
    ('[nodes.a]\nhost = "h"\nenabled = 1\n', "F:3: node 'a' key 'enabled': expected true or false, got int 1"),
    ('[nodes.a]\nhost = "h"\ntransport = "telnet"\n', "F:3: node 'a' key 'transport': expected \"ssh\", got 'telnet'"),
    ('[nodes.a]\nhost = "h"\nengine = "podman"\n',
     "F:3: node 'a' key 'engine': expected \"docker\" (the only engine so far), got 'podman'"),
    ('[nodes.a]\nuser = "u"\n', "F:1: node 'a': missing 'host' (an address or an ~/.ssh/config alias)"),
])
def test_each_mistake_is_one_line_with_file_line_node_key_and_what_is_expected(tmp_path, text, line):
    assert error(tmp_path, text) == line


def test_max_builds_is_1_to_64_on_both_sides(tmp_path):
    for value in (1, 64):
        (node,) = load_nodes_file(nodes_file(tmp_path, f'[nodes.a]\nhost = "h"\nmax_builds = {value}\n'))
        assert node.max_builds == value
    for value in (0, 65):
        assert "expected an integer 1-64" in error(tmp_path, f'[nodes.a]\nhost = "h"\nmax_builds = {value}\n')


def test_left_out_keys_take_the_documented_defaults(tmp_path):
    """An SSH node: 2 build slots, enabled, strict host keys, transport ssh, engine docker. The
    local node: 4 build slots, enabled. Both remember file:line of their table."""
    local, ssh = load_nodes_file(nodes_file(tmp_path, '[nodes.local]\nlabels = {}\n\n[nodes.a]\nhost = "h"\n'))
    assert (local.name, local.transport, local.max_builds, local.enabled) == ("local", "local", 4, True)
    assert (ssh.transport, ssh.max_builds, ssh.enabled, ssh.host_key_policy, ssh.engine) == (
        "ssh", 2, True, "strict", "docker")
    path = tmp_path / "nodes.toml"
    assert (local.source, ssh.source) == (f"{path}:1", f"{path}:4")


def test_enabled_false_and_labels_are_kept(tmp_path):
    (node,) = load_nodes_file(nodes_file(tmp_path, '[nodes.a]\nhost = "h"\nenabled = false\nlabels = { site = "x" }\n'))
    assert node.enabled is False and node.labels == (("site", "x"),)


def test_identity_and_known_hosts_are_relative_to_the_file_absolute_paths_stay(tmp_path, monkeypatch):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id").write_text("key")
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)  # the working directory plays no part
    (node,) = load_nodes_file(nodes_file(
        tmp_path, f'[nodes.a]\nhost = "h"\nidentity = "keys/id"\nknown_hosts = "{tmp_path}/kh"\n'))
    assert node.identity == str(tmp_path / "keys" / "id")
    assert node.known_hosts == str(tmp_path / "kh")


@pytest.mark.parametrize("gid,name,members,private", [
    (1000, "ann", [], True),          # Debian's user-private group
    (1000, "ann", ["ann"], True),     # listing the owner as a member changes nothing
    (1000, "ann", ["bob"], False),    # someone else can write as the group
    (1001, "ann", [], False),         # named after the owner but not the owner's primary group
    (1000, "staff", [], False),       # the primary group, but a shared one
])
def test_a_user_private_group_is_the_owners_primary_group_named_after_them_with_no_one_else(
        monkeypatch, gid, name, members, private):
    from types import SimpleNamespace

    from archfleet import inventory

    users = {1000: SimpleNamespace(pw_uid=1000, pw_gid=1000, pw_name="ann")}
    groups = {gid: SimpleNamespace(gr_gid=gid, gr_name=name, gr_mem=members)}
    monkeypatch.setattr(inventory, "pwd", SimpleNamespace(getpwuid=lambda uid: users[uid]))
    monkeypatch.setattr(inventory, "grp", SimpleNamespace(getgrgid=lambda g: groups[g]))
    assert _private_group(1000, gid) is private
    assert _private_group(1000, 4242) is False  # no such group
    assert _private_group(4242, gid) is False  # no such user
