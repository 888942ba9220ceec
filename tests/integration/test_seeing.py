"""Seeing a build: live rows in a terminal, plain lines when piped, the metadata file against
its schema, the HTML report in headless Chromium, and `archfleet doctor`."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import time
import uuid

import pytest

from conftest import REPO, missing
from labtools import unique


def test_tty_shows_live_rows_and_a_summary(lab, tmp_path):
    if shutil.which("tmux") is None:
        missing("tmux is not installed")
    session = unique("af")
    tag = f"{lab.registry}/promises/tty:{unique('t')}"
    log = tmp_path / "done"
    (tmp_path / "Dockerfile").write_text(f"FROM {lab.base}\nARG N\nRUN echo $N > /n && sleep 3\nCMD [\"uname\",\"-m\"]\n")
    cmd = (f"cd {REPO} && {sys.executable} -m archfleet.cli build --platform linux/amd64,linux/arm64 -t {tag} --push "
           f"--build-arg N={uuid.uuid4().hex} {tmp_path}; echo $? > {log}; sleep 60")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "150", "-y", "30", cmd], check=True)
    try:
        live = ""
        deadline = time.time() + 60
        while time.time() < deadline and "building" not in live:
            time.sleep(0.3)
            live = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
        assert "PLATFORM" in live and "STATE" in live and "linux/arm64" in live and "building" in live, live
        assert "[linux/arm64@local]" not in live  # rows, not log lines
        while time.time() < deadline + 60 and not log.exists():
            time.sleep(0.5)
        final = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
        assert log.read_text().strip() == "0", final
        assert "archfleet build" in final and "index sha256:" in final and "took" in final
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_piped_output_is_plain_prefixed_lines(lab):
    tag = f"{lab.registry}/promises/plain:{unique('t')}"
    proc = lab.archfleet("build", "--platform", "linux/amd64,linux/arm64", "-t", tag, "--push", "examples/arch-test",
                         check=True)  # stderr is a pipe here: auto means plain
    assert "[linux/arm64@local] building" in proc.stderr
    assert "[archfleet] index sha256:" in proc.stderr
    assert "\x1b[" not in proc.stderr  # no terminal control codes in logs


def test_metadata_validates_and_matches_the_registry(lab, tmp_path):
    import jsonschema

    schema = json.loads((REPO / "docs" / "schema" / "metadata.schema.json").read_text())
    tag = f"{lab.registry}/promises/meta:{unique('t')}"
    meta = tmp_path / "m.json"
    lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm/v7", "-t", tag, "--push", "--metadata-file",
                  str(meta), "examples/arch-test", check=True)
    doc = json.loads(meta.read_text())
    jsonschema.validate(doc, schema)
    index = lab.manifest("promises/meta", tag.rsplit(":", 1)[1])
    assert doc["containerimage.digest"] == index.headers["docker-content-digest"]
    assert doc["containerimage.descriptor"]["size"] == len(index.content)
    served = {m["digest"] for m in index.json()["manifests"]}
    assert {e["digest"] for e in doc["archfleet.platforms"].values()} == served


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    missing("chromium is not installed (apt-get install chromium)")


CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_html_report_renders_with_one_bar_per_platform(lab, tmp_path):
    browser = chromium()
    tag = f"{lab.registry}/promises/report:{unique('t')}"
    report = tmp_path / "report.html"
    platforms = ["linux/amd64", "linux/arm64", "linux/s390x"]
    lab.archfleet("build", "-q", "--platform", ",".join(platforms), "-t", tag, "--push", "--report", str(report),
                  "examples/arch-test", check=True)
    text = report.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")  # a namespace name, not a fetch
    assert "http://" not in text and "https://" not in text and "<script" not in text  # self-contained
    dom = subprocess.run([browser, *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          f"file://{report}"], capture_output=True, text=True, timeout=120).stdout
    for p in platforms:
        assert dom.count(f'class="bar actual done" data-platform="{p}"') == 1, p
        assert dom.count(f'class="bar planned" data-platform="{p}"') == 1, p
    shot = tmp_path / "report.png"
    taken = subprocess.run([browser, *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                            "--window-size=1100,520", f"file://{report}"], capture_output=True, text=True, timeout=120)
    assert taken.returncode == 0, taken.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1100, 520)  # the page, drawn


@pytest.mark.parametrize("emulators_removed", ["all"], indirect=True)
def test_doctor_names_each_problem_and_what_to_do(lab, nodes, emulators_removed):
    nodes.fault("n2", "sshd-stop")
    try:
        proc = lab.archfleet("doctor", "--nodes", str(nodes.toml), "--registry", "127.0.0.1:5999",
                             "--registry", lab.registry)
        out = proc.stdout
        assert proc.returncode == 3, out + proc.stderr
        lines = {l[6:].split(": ", 1)[0]: l for l in out.splitlines() if l[:4] in ("ok  ", "warn", "FAIL")}
        assert lines["registry 127.0.0.1:5999"].startswith("FAIL") and "start the registry" in lines["registry 127.0.0.1:5999"]
        assert lines[f"registry {lab.registry}"].startswith("ok")
        assert lines["node n2"].startswith("FAIL") and "check that sshd runs on 10.231.0.12" in lines["node n2"]
        assert lines["node n1"].startswith("ok")
        assert lines["binfmt"].startswith("FAIL") and "archfleet binfmt --install all" in lines["binfmt"]
        assert lines["local engine"].startswith("ok")
    finally:
        nodes.fault("n2", "sshd-start")
