import json
import time

from archfleet import linkrate


def test_small_transfers_are_not_measurements(tmp_path, monkeypatch):
    monkeypatch.setattr(linkrate, "_file", lambda: tmp_path / "links.json")
    assert linkrate.record("n1", 1000, 0.01) is None and linkrate.measured("n1") is None


def test_moving_average_and_expiry(tmp_path, monkeypatch):
    monkeypatch.setattr(linkrate, "_file", lambda: tmp_path / "links.json")
    assert linkrate.record("n1", 100_000_000, 2.0) == 50e6
    assert linkrate.record("n1", 10_000_000, 1.0) == 30e6  # half the new 10 MB/s, half the old 50
    assert linkrate.measured("n1") == 30e6 and linkrate.measured("n2") is None
    doc = json.loads((tmp_path / "links.json").read_text())
    doc["n1"]["at"] = time.time() - linkrate.TTL - 1
    (tmp_path / "links.json").write_text(json.dumps(doc))
    assert linkrate.measured("n1") is None


def test_a_broken_file_is_no_rate(tmp_path, monkeypatch):
    monkeypatch.setattr(linkrate, "_file", lambda: tmp_path / "links.json")
    (tmp_path / "links.json").write_text("[1, 2")
    assert linkrate.measured("n1") is None
    assert linkrate.record("n1", 4 << 20, 1.0) == 4 << 20
