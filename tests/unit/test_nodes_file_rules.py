"""nodes.toml, rule by rule (docs/nodes.md): the exact line each mistake prints, the defaults a
node gets when a key is left out, and paths in the file being relative to the file.

The error lines are compared whole: nodes.md promises that every error names ``file:line``,
the node and the key, and says what is expected; a test that only looked for a word would
pass with the key, the line or the expectation gone.
"""

import os

import pytest

from archfleet.errors import PluginError, UsageError
from archfleet.inventory import _private_group, load_nodes_file
from archfleet.plugins.ssh import KEYS as SSH_KEYS

# the transports' keys as the pipeline loads them (archfleet_node_keys): the ssh plugin's
KEYS = {"ssh": SSH_KEYS}
KNOWN_SSH = ("arch, docker_host, enabled, engine, engine_cli, host, host_key_policy, identity, known_hosts, "
             "labels, max_builds, port, transport, user")


def nodes_file(tmp_path, text):
    path = tmp_path / "nodes.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def error(tmp_path, text) -> str:
    path = nodes_file(tmp_path, text)
    with pytest.raises(UsageError) as err:
        load_nodes_file(path, KEYS)
    return str(err.value).replace(str(path), "F")


@pytest.mark.parametrize("text,line", [
    ('[nodes."-a"]\nhost = "h"\n',
     "F:1: node '-a': names are letters, digits, '.', '_' and '-' (at most 63, not starting with a symbol)"),
    ("[nodes]\na = 1\n", "F:1: node 'a': must be a table ([nodes.NAME])"),
    ('[nodes.a]\nhost = "h"\nport = true\n', "F:3: node 'a' key 'port': expected an integer 1-65535, got boolean true"),  # TOML spells it true
    ('[nodes.a]\nhost = "h"\nport = "22"\n',
     "F:3: node 'a' key 'port': expected an integer 1-65535, got string \"22\""),
    ('[nodes.a]\nhost = "h"\nuser = 7\n', "F:3: node 'a' key 'user': expected a user name, got integer 7"),
    ('[nodes.a]\nhost = "h"\ncolour = "red"\n', f"F:3: node 'a' key 'colour': unknown key (known: {KNOWN_SSH})"),
    ('[nodes.local]\nhost = "h"\n',
     "F:2: node 'local' key 'host': unknown key (known: docker_host, enabled, engine, engine_cli, labels, max_builds); "
     "the local node takes only these"),
    ('[nodes.a]\nhost = "h"\nmax_builds = 65\n', "F:3: node 'a' key 'max_builds': expected an integer 1-64, got 65"),
    ('[nodes.a]\nhost = "h"\nengine_cli = " "\n', "F:3: node 'a' key 'engine_cli': expected a path, got \" \""),
    ('[nodes.a]\nhost = "h"\nenabled = 1\n', "F:3: node 'a' key 'enabled': expected true or false, got integer 1"),
    ('[nodes.a]\nhost = "h"\ntransport = "telnet"\n',
     "F:3: node 'a' key 'transport': expected \"ssh\" (a transport a plugin provides), got \"telnet\""),
    ('[nodes.a]\nhost = "h"\nengine = "rkt"\n',
     "F:3: node 'a' key 'engine': expected \"docker\" or \"podman\", got \"rkt\""),
    ('[nodes.a]\nuser = "u"\n', "F:1: node 'a': missing 'host' (an address or an ~/.ssh/config alias)"),
])
def test_each_mistake_is_one_line_with_file_line_node_key_and_what_is_expected(tmp_path, text, line):
    assert error(tmp_path, text) == line


def test_a_transport_no_plugin_provides_is_named_before_the_keys_it_would_declare(tmp_path):
    """The transport decides which keys a node may have: with the ssh plugin disabled, an SSH
    node's ``host`` is not the mistake to report."""
    path = nodes_file(tmp_path, '[nodes.a]\nhost = "h"\n')
    with pytest.raises(UsageError) as err:
        load_nodes_file(path, {})
    assert str(err.value) == f"{path}:1: node 'a': no plugin provides transport 'ssh' (is it disabled?)"
    path = nodes_file(tmp_path, '[nodes.a]\nhost = "h"\ntransport = "ssh"\n')
    with pytest.raises(UsageError) as err:
        load_nodes_file(path, {})
    assert str(err.value) == (f"{path}:3: node 'a' key 'transport': expected a transport a plugin provides "
                              "(none is loaded), got \"ssh\"")


def test_max_builds_is_1_to_64_on_both_sides(tmp_path):
    for value in (1, 64):
        (node,) = load_nodes_file(nodes_file(tmp_path, f'[nodes.a]\nhost = "h"\nmax_builds = {value}\n'), KEYS)
        assert node.max_builds == value
    for value in (0, 65):
        assert "expected an integer 1-64" in error(tmp_path, f'[nodes.a]\nhost = "h"\nmax_builds = {value}\n')


def test_left_out_keys_take_the_documented_defaults(tmp_path):
    """An SSH node: 2 build slots, enabled, strict host keys, transport ssh, engine docker. The
    local node: 4 build slots, enabled. Both remember file:line of their table."""
    local, ssh = load_nodes_file(nodes_file(tmp_path, '[nodes.local]\nlabels = {}\n\n[nodes.a]\nhost = "h"\n'), KEYS)
    assert (local.name, local.transport, local.max_builds, local.enabled, local.engine) == (
        "local", "local", 4, True, "docker")
    assert (ssh.transport, ssh.max_builds, ssh.enabled, ssh.setting("host_key_policy"), ssh.engine) == (
        "ssh", 2, True, "strict", "docker")
    path = tmp_path / "nodes.toml"
    assert (local.source, ssh.source) == (f"{path}:1", f"{path}:4")


def test_enabled_false_and_labels_are_kept(tmp_path):
    (node,) = load_nodes_file(nodes_file(tmp_path, '[nodes.a]\nhost = "h"\nenabled = false\nlabels = { site = "x" }\n'),
                              KEYS)
    assert node.enabled is False and node.labels == (("site", "x"),)


def test_identity_and_known_hosts_are_relative_to_the_file_absolute_paths_stay(tmp_path, monkeypatch):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id").write_text("key")
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)  # the working directory plays no part
    (node,) = load_nodes_file(nodes_file(
        tmp_path, f'[nodes.a]\nhost = "h"\nidentity = "keys/id"\nknown_hosts = "{tmp_path}/kh"\n'), KEYS)
    assert node.setting("identity") == str(tmp_path / "keys" / "id")
    assert node.setting("known_hosts") == str(tmp_path / "kh")


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


# --- the file as a whole --------------------------------------------------------------------------

from archfleet.api import hookimpl  # noqa: E402
from archfleet.inventory import MAX_BYTES, find_nodes_file, make_config  # noqa: E402
from archfleet.manager import make_hooks  # noqa: E402
from archfleet.model import NodeSpec  # noqa: E402
from archfleet.pipeline import nodes_of  # noqa: E402
from archfleet.session import Session  # noqa: E402


@pytest.mark.parametrize("text,line", [
    ('[nodes.a]\nhost = "h"\n\n[nodes.a]\nhost = "i"\n', "F:4: node 'a' is defined twice (first at line 1)"),
    ('\n[nodes.b]\nhost = "h"\n\n[nodes.b]\n', "F:5: node 'b' is defined twice (first at line 2)"),
    ("nodes = 1\n", "F:1: 'nodes' must be a table of [nodes.NAME] tables"),
    ('[nodes.a]\nhost = "h"\nport = \n', "F:3: not valid TOML: Invalid value"),
    ("[other]\nx = 1\n", "F:1: unknown top-level key 'other'; nodes go in [nodes.NAME] tables"),
])
def test_file_level_mistakes_are_one_line_with_file_and_line(tmp_path, text, line):
    assert error(tmp_path, text) == line


def test_a_key_is_found_on_its_line_after_quoted_names_and_sub_tables(tmp_path):
    text = ("[nodes.'a']\n"          # 1
            '"host" = "h"\n'          # 2
            "\n"                      # 3
            "[nodes.b.labels]\n"      # 4: not b's own keys
            'port = "x"\n'            # 5
            "\n"                      # 6
            "[nodes.b]\n"             # 7
            'host = "h"\n'            # 8
            "port = 0\n")             # 9
    assert error(tmp_path, text) == "F:9: node 'b' key 'port': expected an integer 1-65535, got 0"
    assert error(tmp_path, '[nodes."a"]\n"host" = 7\n') == "F:2: node 'a' key 'host': expected a host name, " \
                                                            "address or ~/.ssh/config alias, got integer 7"


def test_a_nodes_file_is_at_most_1_mib(tmp_path):
    path = tmp_path / "nodes.toml"
    path.write_bytes(b"#" * (MAX_BYTES - 1) + b"\n")
    path.chmod(0o600)
    assert load_nodes_file(path, KEYS) == []
    path.write_bytes(b"#" * MAX_BYTES + b"\n")
    with pytest.raises(UsageError) as err:
        load_nodes_file(path, KEYS)
    assert str(err.value) == f"{path}: larger than {MAX_BYTES} bytes; this is not a nodes file"


def test_a_file_that_cannot_be_opened_says_why(tmp_path):
    with pytest.raises(UsageError) as err:
        load_nodes_file(tmp_path / "missing.toml", KEYS)
    assert str(err.value) == f"{tmp_path / 'missing.toml'}: cannot read: No such file or directory"


def test_a_nodes_path_that_is_not_utf8_is_refused_naming_the_byte(monkeypatch):
    monkeypatch.delenv("ARCHFLEET_NODES", raising=False)
    with pytest.raises(UsageError) as err:
        find_nodes_file("n\udcffodes.toml")
    assert str(err.value) == ("--nodes 'n\\udcffodes.toml': not UTF-8 at byte 1; archfleet takes UTF-8 names "
                              "and values")


def test_make_config_carries_every_choice(tmp_path, monkeypatch):
    monkeypatch.delenv("ARCHFLEET_NODES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    path = nodes_file(tmp_path, '[nodes.a]\nhost = "h"\n')
    notes = []
    config = make_config(str(path), engine_cli="/opt/docker", local=False, only_nodes=("a",), note=notes.append,
                         keys=KEYS)
    assert (config.nodes_file, config.engine_cli, config.local, config.only_nodes) == (path, "/opt/docker", False,
                                                                                       ("a",))
    assert [n.name for n in config.file_nodes] == ["a"] and notes == []  # named: trusted, nothing to say
    default = make_config()
    assert (default.nodes_file, default.file_nodes, default.engine_cli, default.local, default.only_nodes) == (
        None, (), None, True, ())


def test_an_ignored_working_directory_file_is_said_with_the_file_used(tmp_path, monkeypatch):
    monkeypatch.delenv("ARCHFLEET_NODES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "config" / "archfleet").mkdir(parents=True)
    mine = nodes_file(tmp_path / "config" / "archfleet", '[nodes.a]\nhost = "h"\n')
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "nodes.toml").write_text('[nodes.evil]\nhost = "h"\n')
    notes = []
    assert make_config(note=notes.append, keys=KEYS).nodes_file == mine
    assert notes == ["./nodes.toml is not read unless you name it (it can run programs): pass --nodes nodes.toml "
                     f"or set $ARCHFLEET_NODES if you trust it; using {mine}"]
    monkeypatch.setenv("ARCHFLEET_NODES", str(mine))
    make_config(note=notes.append, keys=KEYS)
    assert len(notes) == 1  # a file named in the environment is a choice: nothing to say


class Contributes:
    def __init__(self, *nodes):
        self.nodes = nodes

    @hookimpl
    def archfleet_add_nodes(self, config):
        return list(self.nodes)


def manager(*nodes):
    """The built-in plugins (the local node among them) and one that contributes ``nodes``."""
    hooks = make_hooks({}, load_entrypoints=False)
    hooks.register(Contributes(*nodes), name="test-nodes")
    return hooks


def collect_nodes(hooks, config):
    """The inventory stage as a command runs it (pipeline.nodes_of)."""
    return nodes_of(hooks, config, Session())


def test_nodes_come_local_first_then_in_order_without_the_disabled(tmp_path):
    pm = manager(NodeSpec("z", transport="test"), NodeSpec("off", transport="test", enabled=False),
                 NodeSpec("b", transport="test"))
    assert [n.name for n in collect_nodes(pm, make_config())] == ["local", "z", "b"]
    assert [n.name for n in collect_nodes(pm, make_config(only_nodes=("b", "local")))] == ["local", "b"]
    assert [n.name for n in collect_nodes(pm, make_config(local=False, only_nodes=("b",)))] == ["b"]


def test_an_unknown_node_selection_names_what_exists():
    pm = manager(NodeSpec("b", transport="test"))
    with pytest.raises(UsageError) as err:
        collect_nodes(pm, make_config(only_nodes=("b", "x", "y")))
    assert str(err.value) == "--node: no node named x, y (known: b, local)"
    with pytest.raises(UsageError) as err:
        collect_nodes(make_hooks({}, load_entrypoints=False), make_config(local=False, only_nodes=("x",)))
    assert str(err.value) == "--node: no node named x (known: none)"


def test_two_nodes_of_one_name_or_a_contribution_that_is_no_node_are_refused():
    pm = manager(NodeSpec("b", transport="test", source="one.toml:3"), NodeSpec("b", transport="test", source="p:1"))
    with pytest.raises(UsageError) as err:
        collect_nodes(pm, make_config(local=False))
    assert str(err.value) == "p:1: node name 'b' is already used at one.toml:3"
    with pytest.raises(PluginError) as err:  # the plugin's mistake, not the user's (PluginError, exit 1)
        collect_nodes(manager("b"), make_config(local=False))
    assert str(err.value) == "plugin 'test-nodes' contributed 'b', not a NodeSpec"


# --- each key's own rule ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,line", [
    ('[nodes.a]\nhost = "h"\narch = 7\n', "F:3: node 'a' key 'arch': expected a string, got integer 7"),
    ('[nodes.a]\nhost = "h"\narch = true\n', "F:3: node 'a' key 'arch': expected a string, got boolean true"),
    ('[nodes.a]\nhost = "-oProxyJump"\n',
     "F:2: node 'a' key 'host': expected a host name, address or ~/.ssh/config alias, got \"-oProxyJump\""),
    ('[nodes.a]\nhost = "h"\nport = 0\n', "F:3: node 'a' key 'port': expected an integer 1-65535, got 0"),
    ('[nodes.a]\nhost = "h"\nport = 65536\n', "F:3: node 'a' key 'port': expected an integer 1-65535, got 65536"),
    ('[nodes.a]\nhost = "h"\nidentity = " "\n', "F:3: node 'a' key 'identity': expected a path, got \" \""),
    ('[nodes.a]\nhost = "h"\nknown_hosts = ""\n', "F:3: node 'a' key 'known_hosts': expected a path, got \"\""),
    ('[nodes.a]\nhost = "h"\nidentity = "/nonexistent/key"\n',
     "F:3: node 'a' key 'identity': cannot read file '/nonexistent/key': No such file or directory"),
    ('[nodes.Xa]\nhost = "h"\nport = 0\n', "F:3: node 'Xa' key 'port': expected an integer 1-65535, got 0"),
    ('[nodes.b]\nhost = "h"\n  [nodes.b.labels]\n  port = "x"\n\n[nodes.c]\nhost = "h"\nport = 0\n',
     "F:8: node 'c' key 'port': expected an integer 1-65535, got 0"),
])
def test_each_key_is_checked_by_its_own_rule(tmp_path, text, line):
    assert error(tmp_path, text) == line


def test_every_value_given_is_kept(tmp_path):
    (tmp_path / "id").write_text("key")
    (local, node) = load_nodes_file(nodes_file(tmp_path, (
        '[nodes.local]\nlabels = { site = "here" }\nmax_builds = 3\n\n'
        '[nodes.a]\nhost = "h"\nport = 1\ntransport = "ssh"\nengine = "docker"\nengine_cli = "/opt/docker"\n'
        'host_key_policy = "accept-new"\nidentity = "id"\nknown_hosts = "kh"\nuser = "u"\n'
        'docker_host = "unix:///run/d.sock"\n')), KEYS)
    assert (local.labels, local.max_builds, local.enabled) == ((("site", "here"),), 3, True)
    assert (node.setting("port"), node.transport, node.engine, node.engine_cli, node.setting("host_key_policy"),
            node.setting("user"), node.docker_host, node.arch) == (1, "ssh", "docker", "/opt/docker", "accept-new",
                                                                   "u", "unix:///run/d.sock", None)
    assert (node.setting("identity"), node.setting("known_hosts")) == (str(tmp_path / "id"), str(tmp_path / "kh"))
    (top,) = load_nodes_file(nodes_file(tmp_path, '[nodes.a]\nhost = "h"\nport = 65535\n'), KEYS)
    assert top.setting("port") == 65535
    (pod,) = load_nodes_file(nodes_file(tmp_path, '[nodes.a]\nhost = "h"\nengine = "podman"\n'), KEYS)
    assert pod.engine == "podman"


def test_the_local_node_remembers_its_own_line(tmp_path):
    ssh, local = load_nodes_file(nodes_file(tmp_path, '[nodes.a]\nhost = "h"\n\n[nodes.local]\nmax_builds = 1\n'),
                                 KEYS)
    assert local.source == f"{tmp_path / 'nodes.toml'}:4"


@pytest.mark.parametrize("uid,mode,gid,private,problem", [
    (1000, 0o600, 1000, False, None),                   # mine, only I can write
    (0, 0o644, 0, False, None),                         # root's
    (1001, 0o600, 1001, False, "owned by uid 1001 (not you or root)"),
    (1000, 0o666, 1000, True, "anyone can write (mode 0666)"),
    (1000, 0o664, 1000, True, None),                    # group-writable, my private group
    (1000, 0o664, 50, False, "its group can write (mode 0664, gid 50)"),
    (1000, 0o644, 50, False, None),                     # a shared group that cannot write
])
def test_who_could_change_a_nodes_file(monkeypatch, uid, mode, gid, private, problem):
    from types import SimpleNamespace

    from archfleet import inventory

    monkeypatch.setattr(inventory.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(inventory, "_private_group", lambda u, g: private)
    st = SimpleNamespace(st_uid=uid, st_mode=0o100000 | mode, st_gid=gid)
    assert inventory._untrusted(st) == problem


def test_a_directory_named_nodes_toml_in_the_working_directory_gets_no_note(tmp_path, monkeypatch):
    from archfleet.inventory import ignored_local_file

    monkeypatch.chdir(tmp_path)
    (tmp_path / "nodes.toml").mkdir()
    assert ignored_local_file(None) is None


@pytest.mark.parametrize("value,shown", [
    ('"22"', 'string "22"'), ("2.5", "float 2.5"), ("inf", "float inf"),
    ('["a", true]', 'array ["a", true]'), ('{ x = 1, "a b" = "c" }', 'table { x = 1, "a b" = "c" }'),
    ("1979-05-27T07:32:00Z", "offset date-time 1979-05-27T07:32:00Z"),
    ("1979-05-27T00:32:00.999+01:00", "offset date-time 1979-05-27T00:32:00.999+01:00"), ('"tab\\there"', 'string "tab\\there"'),
    ("1979-05-27T07:32:00", "local date-time 1979-05-27T07:32:00"), ("1979-05-27", "local date 1979-05-27"),
    ("07:32:00", "local time 07:32:00"), ("true", "boolean true"),
    ("[" + ", ".join(["1"] * 300) + "]", "array [" + ", ".join(["1"] * 300)[:78] + "…"),  # cut at 80 characters
])
def test_a_wrong_value_is_shown_as_toml_writes_it(tmp_path, value, shown):
    """Rule: the value in an error is what the user wrote, in TOML's spelling and with TOML's
    type names (it showed Python's: ``str '22'``, ``list ['a', True]``)."""
    assert error(tmp_path, f'[nodes.a]\nhost = "h"\nport = {value}\n') == \
        f"F:3: node 'a' key 'port': expected an integer 1-65535, got {shown}"
