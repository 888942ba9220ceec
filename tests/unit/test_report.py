"""``--report FILE.html`` (cli.md): a self-contained page, a lane per node, per platform one
planned bar (the plan's estimate) and its actual attempts, failed attempts red, cancelled ones
grey, and the plan table. Rendered here from a summary of the run the docs' screenshot shows:
node n1 failed mid-build and its two platforms were re-planned onto n3."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from archfleet.executor import Attempt
from archfleet.model import Option, PlatformResult
from archfleet.pipeline import BuildSummary, Planned
from archfleet.planner import Plan, Rejected, Scheduled
from archfleet.report import render, write_report

from stubs import AMD, ARM, S390, request

RED, GREY = "#d62728", "#bbb"
INDEX = "sha256:" + "ef" * 32


def opt(platform, node, estimate, strategy="native", basis="prior"):
    return Option(platform, strategy, node, estimate, basis=basis)


def summary(attempts=None, results=None, chosen=None, rejected=(), index=INDEX):
    chosen = chosen or [Scheduled(opt(AMD, "n2", 40.0), 0.0, 40.0),
                        Scheduled(opt(ARM, "n1", 50.0), 0.0, 50.0),
                        Scheduled(opt(S390, "n1", 100.0, "qemu"), 0.0, 100.0)]
    if attempts is None:
        attempts = [Attempt(opt(AMD, "n2", 40.0), 0.0, 42.0, "done"),
                    Attempt(opt(ARM, "n1", 50.0), 0.0, 12.0, "node failed: node n1: SSH connection lost"),
                    Attempt(opt(S390, "n1", 100.0, "qemu"), 0.0, 12.0, "node failed: node n1: SSH connection lost"),
                    Attempt(opt(ARM, "n3", 60.0), 12.0, 70.0, "done"),
                    Attempt(opt(S390, "n3", 110.0, "qemu"), 12.0, 120.0, "done")]
    if results is None:
        results = [PlatformResult(a.option.platform, a.option, a.end - a.start) for a in attempts if a.outcome == "done"]
    plan = Plan(tuple(chosen), tuple(rejected))
    planned = Planned({}, tuple(s.option for s in chosen), plan)
    return BuildSummary(tuple(results), (), index, None, 0, ("reg/app:1",), planned, (), 121.0, tuple(attempts))


def page(s=None) -> str:
    return render(s or summary(), request(AMD, ARM, S390))


def bars(html: str, cls: str) -> list[dict]:
    """Attributes of every <rect> whose class list holds all of ``cls``."""
    out = []
    for attrs in re.findall(r"<rect ([^>]*)>", html):
        a = dict(re.findall(r'([\w-]+)="([^"]*)"', attrs))
        if set(cls.split()) <= set(a.get("class", "").split()):
            out.append(a)
    return out


def test_one_planned_bar_per_platform_and_one_actual_bar_per_attempt():
    html = page()
    planned = bars(html, "bar planned")
    assert sorted(b["data-platform"] for b in planned) == sorted(map(str, (AMD, ARM, S390)))
    assert len(bars(html, "bar actual")) == 5
    assert sorted(b["data-platform"] for b in bars(html, "bar actual done")) == sorted(map(str, (AMD, ARM, S390)))


def test_failed_attempts_are_red_and_only_they_are():
    html = page()
    failed = bars(html, "bar actual failed")
    assert [(b["data-platform"], b["fill"]) for b in failed] == [(str(ARM), RED), (str(S390), RED)]
    assert all(b["fill"] != RED for b in bars(html, "bar actual done"))


def test_a_cancelled_attempt_is_grey_not_red():
    s = summary(attempts=[Attempt(opt(AMD, "n2", 40.0), 0.0, 3.0, "failed: build failed: exit code: 1"),
                          Attempt(opt(ARM, "n1", 50.0), 0.0, 3.0, "cancelled")], results=[], index=None)
    html = page(s)
    assert [b["fill"] for b in bars(html, "bar actual cancelled")] == [GREY]
    assert [b["fill"] for b in bars(html, "bar actual failed")] == [RED]
    assert "<p>Nothing pushed.</p>" in html


def test_only_a_node_failure_is_labelled_re_planned():
    """A failed build is not retried (concepts.md "The run"): its bar says failed, not re-planned."""
    s = summary(attempts=[Attempt(opt(AMD, "n2", 40.0), 0.0, 3.0, "failed: build failed: exit code: 1"),
                          Attempt(opt(ARM, "n1", 50.0), 0.0, 3.0, "node failed: node n1: engine gone"),
                          Attempt(opt(ARM, "n3", 50.0), 3.0, 9.0, "cancelled")], results=[], index=None)
    labels = re.findall(r'class="label"[^>]*>([^<]*)</text>', page(s))
    assert labels == ["linux/amd64 native - failed", "linux/arm64 native - node failed, re-planned",
                      "linux/arm64 native"]


def test_bars_are_to_scale():
    """A planned bar's width is its estimate on the page's time scale: 100 s is 2.5 times 40 s."""
    widths = {b["data-platform"]: float(b["width"]) for b in bars(page(), "bar planned")}
    assert widths[str(S390)] / widths[str(AMD)] == pytest.approx(100 / 40, rel=0.01)


def test_a_lane_per_node_in_order_of_first_use():
    lanes = re.findall(r'<text [^>]*class="lane">([^<]*)</text>', page())
    assert lanes == ["n2", "n1", "n3"]


def test_the_plan_table_has_a_row_per_platform_with_its_replans():
    rows = re.findall(r"<tr><td>(linux/[^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>[^<]*</td><td>([^<]*)</td>"
                      r"<td>(\d+)</td>", page())
    assert rows == [("linux/amd64", "native@n2", "40.0s", "native@n2 in 42.0s", "0"),
                    ("linux/arm64", "native@n1", "50.0s", "native@n3 in 58.0s", "1"),
                    ("linux/s390x", "qemu@n1", "100.0s", "qemu@n3 in 108.0s", "1")]


class Balanced(HTMLParser):
    """Every non-void element closed in order; records what would load something from elsewhere."""

    VOID = {"meta", "br", "img", "hr", "input", "link", "area", "base", "col", "embed", "source", "track", "wbr"}

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href") or (value and re.search(r"url\(|https?://(?!www\.w3\.org/2000/svg)", value)):
                self.problems.append(f"<{tag} {name}={value!r}> refers elsewhere")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.add(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()


@pytest.mark.parametrize("hostile", [False, True])
def test_the_page_is_valid_self_contained_html(hostile):
    """Balanced elements, an SVG that parses as XML, nothing loaded from elsewhere (no script,
    no link, no URL), and values from plugins and nodes escaped: a node name or an estimate
    basis holding markup stays text."""
    s = summary()
    if hostile:
        evil = opt(AMD, "n2", 40.0, basis='history <script src="http://x/e.js"></script> "q" & co')
        s = summary(chosen=[Scheduled(evil, 0.0, 40.0)], attempts=[Attempt(evil, 0.0, 41.0, 'failed: <img src=x>')],
                    results=[], rejected=[Rejected(opt(AMD, "n9", 80.0), "slower </td></tr><tr>")])
    html = page(s)
    assert html.startswith("<!doctype html>\n") and '<meta charset="utf-8">' in html
    parser = Balanced()
    parser.feed(html)
    parser.close()
    assert parser.problems == [] and parser.stack == []
    assert not parser.tags & {"script", "link", "img", "iframe", "object", "embed"}
    svg = html[html.index("<svg"):html.index("</svg>") + len("</svg>")]
    ET.fromstring(svg)  # well-formed
    if hostile:
        assert "&lt;script src=&quot;http://x/e.js&quot;&gt;" in html and "&lt;img src=x&gt;" in html


def test_write_report_writes_the_rendered_page(tmp_path):
    path = tmp_path / "report.html"
    s = summary()
    write_report(path, s, request(AMD, ARM, S390))
    assert path.read_text() == render(s, request(AMD, ARM, S390))
    assert f"<code>{INDEX}</code> pushed to reg/app:1" in path.read_text()
