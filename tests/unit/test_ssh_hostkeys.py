"""SSH host keys, checked as OpenSSH checks them, against an in-process asyncssh server on a
loopback port: a host given as a name, an IP, an ~/.ssh/config alias with its own Port, or with
a HostKeyAlias; accept-new records an entry OpenSSH accepts; a changed key is always refused,
naming the node, the real host:port and the presented fingerprint."""

import asyncio
import os

import asyncssh
import pytest

from archfleet.errors import InfrastructureError
from archfleet.model import NodeSpec
from archfleet.plugins import ssh as sshp
from archfleet.plugins.ssh import hostkeys
from archfleet.plugins.ssh.hostkeys import SSHNode


class _Server(asyncssh.SSHServer):
    def begin_auth(self, username):
        return False  # no authentication: these tests are about the host key only


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(port, host key) of a throwaway SSH server; HOME is a scratch directory with ~/.ssh."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    key = asyncssh.generate_private_key("ssh-ed25519")
    loop = asyncio.new_event_loop()
    srv = loop.run_until_complete(asyncssh.listen("127.0.0.1", 0, server_host_keys=[key],
                                                  server_factory=_Server))
    port = srv.sockets[0].getsockname()[1]
    yield type("S", (), {"port": port, "key": key, "loop": loop, "home": home})()
    srv.close()
    loop.run_until_complete(srv.wait_closed())
    loop.close()


def connect(server, node):
    async def go():
        conn = await sshp.open_connection(SSHNode.of(node))
        conn.close()
        await conn.wait_closed()

    server.loop.run_until_complete(go())


def refused(server, node) -> str:
    with pytest.raises(InfrastructureError) as err:
        connect(server, node)
    return str(err.value)


def public(key) -> str:
    return key.export_public_key("openssh").decode().split()[0] + " " + key.export_public_key("openssh").decode().split()[1]


def node(**kw):
    """An SSH node as nodes.toml gives it: its ssh keys go into the settings."""
    ssh = {k: kw.pop(k) for k in ("host", "port", "user", "identity", "known_hosts", "host_key_policy") if k in kw}
    return NodeSpec(**{"name": "box", "transport": "ssh", "source": "nodes.toml:3", "settings": ssh, **kw})


def test_accept_new_records_an_ip_with_its_port_the_way_openssh_files_it(server, tmp_path):
    kh = tmp_path / "kh"
    n = node(host="127.0.0.1", port=server.port, known_hosts=str(kh), host_key_policy="accept-new")
    connect(server, n)
    assert kh.read_text() == f"[127.0.0.1]:{server.port} {public(server.key)}\n"
    connect(server, n)  # known now: accepted, and nothing is added
    assert kh.read_text().count("\n") == 1
    assert oct(kh.stat().st_mode & 0o777) == "0o600"


def test_a_host_name_works_for_strict_and_accept_new(server, tmp_path):
    # finding 9: a name used to be passed as the address to known_hosts matching -> ValueError
    kh = tmp_path / "kh"
    n = node(host="localhost", port=server.port, known_hosts=str(kh), host_key_policy="accept-new")
    connect(server, n)
    assert kh.read_text().startswith(f"[localhost]:{server.port} ssh-ed25519 ")
    connect(server, node(host="localhost", port=server.port, known_hosts=str(kh)))  # strict, known


def test_an_ssh_config_alias_with_its_own_port_is_filed_under_hostname_and_port(server, tmp_path):
    (server.home / ".ssh" / "config").write_text(
        f"Host t2box\n    HostName 127.0.0.1\n    Port {server.port}\n    User builder\n")
    kh = tmp_path / "kh"
    n = node(host="t2box", known_hosts=str(kh), host_key_policy="accept-new")
    connect(server, n)
    assert kh.read_text() == f"[127.0.0.1]:{server.port} {public(server.key)}\n"  # not "t2box", not port 22
    connect(server, node(host="t2box", known_hosts=str(kh)))  # and the strict check finds it


def test_port_and_user_in_nodes_toml_win_over_the_aliases(server, tmp_path):
    (server.home / ".ssh" / "config").write_text("Host t2box\n    HostName 127.0.0.1\n    Port 1\n    User nobody\n")
    kh = tmp_path / "kh"
    connect(server, node(host="t2box", port=server.port, user="builder", known_hosts=str(kh),
                         host_key_policy="accept-new"))
    assert kh.read_text().startswith(f"[127.0.0.1]:{server.port} ")


def test_host_key_alias_is_filed_under_the_alias_alone(server, tmp_path):
    # OpenSSH (sshconnect.c): with HostKeyAlias the key is looked up and saved under the alias,
    # without a port
    (server.home / ".ssh" / "config").write_text(
        f"Host t2box\n    HostName 127.0.0.1\n    Port {server.port}\n    HostKeyAlias builder-7\n")
    kh = tmp_path / "kh"
    connect(server, node(host="t2box", known_hosts=str(kh), host_key_policy="accept-new"))
    assert kh.read_text() == f"builder-7 {public(server.key)}\n"
    connect(server, node(host="t2box", known_hosts=str(kh)))


def test_user_known_hosts_file_from_ssh_config_is_read_and_written(server, tmp_path):
    kh = tmp_path / "from-config"
    (server.home / ".ssh" / "config").write_text(
        f"Host t2box\n    HostName 127.0.0.1\n    Port {server.port}\n    UserKnownHostsFile {kh}\n")
    connect(server, node(host="t2box", host_key_policy="accept-new"))
    assert kh.read_text().startswith(f"[127.0.0.1]:{server.port} ")
    assert not (server.home / ".ssh" / "known_hosts").exists()


def test_a_changed_key_is_refused_naming_node_real_port_and_fingerprint(server, tmp_path):
    other = asyncssh.generate_private_key("ssh-ed25519")
    kh = tmp_path / "kh"
    kh.write_text(f"[127.0.0.1]:{server.port} {public(other)}\nt2box {public(other)}\n")
    (server.home / ".ssh" / "config").write_text(f"Host t2box\n    HostName 127.0.0.1\n    Port {server.port}\n")
    before = kh.read_text()
    for policy in ("strict", "accept-new"):
        msg = refused(server, node(host="t2box", known_hosts=str(kh), host_key_policy=policy))
        assert msg.startswith("node box: host key of node box at 127.0.0.1:%d (ssh_config alias t2box) does not "
                              "match" % server.port)
        assert server.key.get_fingerprint("sha256") in msg and "refusing" in msg
        assert ":22" not in msg
    assert kh.read_text() == before  # accept-new never replaces a key


def test_strict_refuses_an_unknown_host_and_says_how_to_trust_it(server, tmp_path):
    kh = tmp_path / "kh"
    kh.write_text("")
    msg = refused(server, node(host="127.0.0.1", port=server.port, known_hosts=str(kh)))
    assert f"host key of node box at 127.0.0.1:{server.port} is not in {kh}" in msg
    assert server.key.get_fingerprint("sha256") in msg and 'accept-new" at nodes.toml:3' in msg
    assert kh.read_text() == ""


def test_a_missing_known_hosts_file_trusts_nobody(server, tmp_path):
    msg = refused(server, node(host="127.0.0.1", port=server.port, known_hosts=str(tmp_path / "nope")))
    assert "is not in" in msg and not (tmp_path / "nope").exists()


def test_an_entry_for_another_port_does_not_count_as_this_hosts_key(server, tmp_path):
    # OpenSSH files a non-22 port under [host]:port only: the port-22 sshd's key on the same
    # address is another host's key, so accept-new may record this one
    other = asyncssh.generate_private_key("ssh-ed25519")
    kh = tmp_path / "kh"
    kh.write_text(f"127.0.0.1 {public(other)}\n")
    connect(server, node(host="127.0.0.1", port=server.port, known_hosts=str(kh), host_key_policy="accept-new"))
    assert kh.read_text().splitlines()[1] == f"[127.0.0.1]:{server.port} {public(server.key)}"


def test_names_looked_up_for_a_name_an_ip_an_alias_and_a_host_key_alias():
    keys = hostkeys.HostKeys(SSHNode.of(node(host="x", known_hosts="/nonexistent")), [], None, None)
    assert keys.names("builder.example", "192.0.2.9", None) == ["builder.example", "192.0.2.9"]
    assert keys.names("builder.example", "192.0.2.9", 2241) == ["[builder.example]:2241", "[192.0.2.9]:2241"]
    assert keys.names("192.0.2.9", "192.0.2.9", 2241) == ["[192.0.2.9]:2241"]
    assert keys.names("::1", "::1", 2222) == ["[::1]:2222"]
    aliased = hostkeys.HostKeys(SSHNode.of(node(host="x", known_hosts="/nonexistent")), [], None, "builder-7")
    assert aliased.names("192.0.2.9", "192.0.2.9", 2241) == ["builder-7"]


def test_known_hosts_files_follow_openssh_defaults_and_ssh_config():
    n = SSHNode.of(node(host="x"))
    files, write = hostkeys.known_hosts_files(n, None)
    assert files[0] == os.path.expanduser("~/.ssh/known_hosts") and "/etc/ssh/ssh_known_hosts" in files
    assert write == os.path.expanduser("~/.ssh/known_hosts")
    assert hostkeys.known_hosts_files(SSHNode.of(node(host="x", known_hosts="/k")), None) == (["/k"], "/k")
    cfg = {"UserKnownHostsFile": [], "GlobalKnownHostsFile": []}  # "none" in ssh_config
    assert hostkeys.known_hosts_files(n, cfg) == ([], None)
