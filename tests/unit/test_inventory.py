import pytest

from archfleet.errors import UsageError
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
    nodes = load_nodes_file(write(tmp_path, GOOD))
    local, pi = nodes
    assert local.transport == "local" and not local.enabled
    assert (pi.name, pi.host, pi.port, pi.user, str(pi.arch), pi.max_builds) == ("pi4", "192.0.2.10", 2222, "builder",
                                                                                 "linux/arm64", 1)
    assert pi.labels == (("site", "lab"),) and pi.source.endswith("nodes.toml:5")
    assert pi.host_key_policy == "strict"


@pytest.mark.parametrize("text,line,needle", [
    ('[nodes.a]\nhost = "h"\nport = "22"\n', 3, "key 'port': expected an integer 1-65535"),
    ('[nodes.a]\nhost = "h"\nport = 70000\n', 3, "expected an integer 1-65535"),
    ('[nodes.a]\nhost = "h"\ncolour = "red"\n', 3, "key 'colour': unknown key"),
    ('[nodes.a]\nuser = "x"\n', 1, "missing 'host'"),
    ('[nodes.a]\nhost = "h"\n\n[nodes.a]\nhost = "i"\n', 4, "defined twice"),
    ('[nodes.a]\nhost = "h"\nmax_builds = 0\n', 3, "key 'max_builds'"),
    ('[nodes.a]\nhost = "h"\nenabled = "yes"\n', 3, "key 'enabled': expected true or false"),
    ('[nodes.a]\nhost = "h"\nidentity = "/nonexistent/key"\n', 3, "cannot read key file"),
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
        load_nodes_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert needle in message
    assert "\n" not in message


def test_lookup_order(tmp_path, monkeypatch):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(""), b.write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHFLEET_NODES", str(b))
    assert find_nodes_file(str(a)) == a
    assert find_nodes_file(None) == b
    monkeypatch.delenv("ARCHFLEET_NODES")
    (tmp_path / "nodes.toml").write_text("")
    assert str(find_nodes_file(None)) == "nodes.toml"
    with pytest.raises(UsageError, match="--nodes: /nope: no such file"):
        find_nodes_file("/nope")
