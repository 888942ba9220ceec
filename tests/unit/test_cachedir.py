"""One cache directory, found in one module: ``archfleet.cachedir`` is the XDG cache dir for
archfleet, every cache (history, link rates, scores, layer scans, the private lease fallback)
takes its path from it, and no other module reads the environment that moves it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from archfleet import cachedir, layercache, layerprints, leases, linkrate, scores

CORE = Path(cachedir.__file__).resolve().parent
PLUGINS = CORE.parent / "plugins"


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("ARCHFLEET_HISTORY", raising=False)
    return h


def test_xdg_cache_home_is_honoured(tmp_path, monkeypatch, home):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    base = tmp_path / "xdg" / "archfleet"
    assert cachedir.root() == base
    assert cachedir.history() == base / "history.sqlite"
    assert cachedir.links() == base / "links.json"
    assert cachedir.scores() == base / "scores.json"
    assert cachedir.layers() == base / "layers-v2"
    assert cachedir.leases() == base / "leases"


@pytest.mark.parametrize("value", [None, "", "relative/cache"])
def test_without_an_absolute_xdg_cache_home_it_is_under_home(monkeypatch, home, value):
    """Unset, empty or relative (the XDG spec: a relative path is invalid and ignored)."""
    if value is not None:
        monkeypatch.setenv("XDG_CACHE_HOME", value)
    assert cachedir.root() == home / ".cache" / "archfleet"


def test_archfleet_history_moves_the_database_or_turns_it_off(tmp_path, monkeypatch, home):
    monkeypatch.setenv("ARCHFLEET_HISTORY", str(tmp_path / "h.sqlite"))
    assert cachedir.history() == tmp_path / "h.sqlite"
    monkeypatch.setenv("ARCHFLEET_HISTORY", "off")
    assert cachedir.history() is None
    monkeypatch.setenv("ARCHFLEET_HISTORY", "")
    assert cachedir.history() == home / ".cache" / "archfleet" / "history.sqlite"


def test_the_environment_is_read_when_asked_not_at_import(tmp_path, monkeypatch, home):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a"))
    first = cachedir.root()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert (first, cachedir.root()) == (tmp_path / "a" / "archfleet", tmp_path / "b" / "archfleet")


def test_runtime_dir_only_when_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert cachedir.runtime_dir() == tmp_path
    for value in ("", "run/user/0"):
        monkeypatch.setenv("XDG_RUNTIME_DIR", value)
        assert cachedir.runtime_dir() is None


def test_every_cache_writes_under_the_one_directory(tmp_path, monkeypatch, home):
    """What the caches write lands in $XDG_CACHE_HOME/archfleet, nowhere else."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    linkrate.record("n1|ssh|h|", 8 << 20, 1.0)
    scores.store("n1|ssh|h|", 1.5)
    layercache.store("sha256:" + "ab" * 32, {"entries": {}, "whiteouts": []})
    layerprints.store([("sha256:" + "ab" * 32, 10, "cd" * 32)])
    base = tmp_path / "xdg" / "archfleet"
    assert linkrate.measured("n1|ssh|h|") == 8 << 20 and scores.cached("n1|ssh|h|") == 1.5
    assert (base / "links.json").is_file() and (base / "scores.json").is_file()
    assert (base / "layers-v2" / ("sha256-" + "ab" * 32 + ".json")).is_file()
    assert (base / "layer-prints.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "xdg"]
    assert list(home.iterdir()) == []


def test_the_private_lease_fallback_is_in_the_cache_dir(tmp_path, monkeypatch, home):
    """Without a private $XDG_RUNTIME_DIR, this user's leases go to the cache dir's leases/."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert leases.private_root() == str(tmp_path / "xdg" / "archfleet" / "leases")
    shared = tmp_path / "run"
    shared.mkdir()
    shared.chmod(0o777)  # not private: not used
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(shared))
    assert leases.private_root() == str(tmp_path / "xdg" / "archfleet" / "leases")
    shared.chmod(0o700)
    assert leases.private_root() == str(shared / leases.PRIVATE)


# What only cachedir.py may do: ask platformdirs for the cache dir, read XDG_* or ARCHFLEET_HISTORY.
CACHE_DIR_CALL = re.compile(r"platformdirs\.user_cache_(?:dir|path)")
ENV_READ = re.compile(r"""environ(?:\.get)?\s*[(\[]\s*["'](?:XDG_\w+|ARCHFLEET_HISTORY)["']|getenv\(\s*["'](?:XDG_\w+|ARCHFLEET_HISTORY)""")


def test_only_cachedir_finds_the_cache_dir_or_reads_its_environment():
    offenders = []
    for path in sorted(CORE.glob("*.py")) + sorted(PLUGINS.glob("*.py")):
        if path.name == "cachedir.py":
            continue
        text = path.read_text()
        for pattern in (CACHE_DIR_CALL, ENV_READ):
            offenders += [f"{path.name}: {m.group(0)}" for m in pattern.finditer(text)]
    assert offenders == []
    assert CACHE_DIR_CALL.search((CORE / "cachedir.py").read_text())
