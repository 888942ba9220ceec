"""``--report FILE.html``: one self-contained page (no network, no scripts) with the timeline of
a build: a lane per node, per platform a planned bar (outline, from the plan's estimates) and
its actual attempts (filled; a failed attempt red, a cancelled one grey), and the plan table."""

from __future__ import annotations

import html
from pathlib import Path

ROW = 22
GAP = 8
LEFT = 120
WIDTH = 900
COLOURS = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#e15759"]


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def render(summary, request) -> str:
    """The ``--report`` HTML page for ``summary`` of ``request``: one self-contained document (inline CSS, no scripts): a lane per node with the planned bar and the actual attempts of each platform, and the plan table."""
    plan = summary.planned.plan
    attempts = list(summary.attempts)
    # one row per (node, platform) that was planned or tried there, grouped by node
    rows_of: dict[str, list[str]] = {}
    for node, platform in [(s.option.node, str(s.option.platform)) for s in plan.chosen] + \
            [(a.option.node, str(a.option.platform)) for a in attempts]:
        rows_of.setdefault(node, [])
        if platform not in rows_of[node]:
            rows_of[node].append(platform)
    y_of: dict[tuple[str, str], float] = {}
    y = 10.0
    separators = []
    for node, plats in rows_of.items():
        separators.append((node, y, y + ROW * len(plats)))
        for p in plats:
            y_of[(node, p)] = y
            y += ROW
        y += GAP
    platforms = [str(p) for p in request.platforms]
    colour = {p: COLOURS[i % len(COLOURS)] for i, p in enumerate(platforms)}
    horizon = max([plan.makespan] + [a.end for a in attempts] + [1.0]) * 1.05
    scale = WIDTH / horizon
    height = int(y + 30)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{LEFT + WIDTH + 20}" height="{height}" '
             f'role="img" aria-label="build timeline">']
    step = max(1, round(horizon / 8))
    t = 0
    while t <= horizon:
        x = LEFT + t * scale
        parts.append(f'<line x1="{x:.1f}" y1="6" x2="{x:.1f}" y2="{height - 24}" stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 8}" class="tick">{t}s</text>')
        t += step
    for node, top, bottom in separators:
        parts.append(f'<rect x="2" y="{top - 2}" width="{LEFT + WIDTH}" height="{bottom - top + 4}" fill="none" '
                     f'stroke="#ccc"/><text x="8" y="{(top + bottom) / 2 + 4}" class="lane">{_esc(node)}</text>')
    for s in plan.chosen:
        o = s.option
        p = str(o.platform)
        yy = y_of[(o.node, p)]
        x, w = LEFT + s.start * scale, max((s.finish - s.start) * scale, 2)
        parts.append(f'<rect class="bar planned" data-platform="{_esc(p)}" x="{x:.1f}" y="{yy + 2}" width="{w:.1f}" '
                     f'height="{ROW - 4}" fill="none" stroke="{colour[p]}" stroke-dasharray="4 3">'
                     f'<title>{_esc(p)} planned on {_esc(o)}: {o.estimate:.1f}s ({_esc(o.basis)})</title></rect>')
    for a in attempts:
        o = a.option
        p = str(o.platform)
        yy = y_of[(o.node, p)]
        x, w = LEFT + a.start * scale, max((a.end - a.start) * scale, 2)
        kind = "done" if a.outcome == "done" else ("cancelled" if a.outcome == "cancelled" else "failed")
        fill = {"done": colour[p], "cancelled": "#bbb", "failed": "#d62728"}[kind]
        parts.append(f'<rect class="bar actual {kind}" data-platform="{_esc(p)}" x="{x:.1f}" y="{yy + 6}" '
                     f'width="{w:.1f}" height="{ROW - 12}" fill="{fill}">'
                     f'<title>{_esc(p)} on {_esc(o)}: {a.end - a.start:.1f}s, {_esc(a.outcome)}</title></rect>')
        # only a node failure is re-planned; a failed build is the platform's end
        label = f"{p} {o.strategy}" + (" - node failed, re-planned" if a.outcome.startswith("node failed")
                                       else " - failed" if kind == "failed" else "")
        fits_after = x + w + 4 + 6.5 * len(label) <= LEFT + WIDTH
        lx = x + w + 4 if fits_after else x + 4
        fill_text = "#222" if fits_after else "#fff"
        parts.append(f'<text x="{lx:.1f}" y="{yy + ROW / 2 + 4}" class="label" fill="{fill_text}">{_esc(label)}</text>')
    parts.append("</svg>")
    rows = []
    by_platform = {str(r.platform): r for r in summary.results}
    for s in plan.chosen:
        o = s.option
        r = by_platform.get(str(o.platform))
        alts = "; ".join(f"{_esc(x.option)} {x.option.estimate:.1f}s: {_esc(x.why)}" for x in plan.rejected
                         if x.option.platform == o.platform)
        replans = [a for a in attempts if a.option.platform == o.platform and a.outcome.startswith("node failed")]
        actual = f"{_esc(r.option)} in {r.seconds:.1f}s" if r else "not built"
        rows.append(f"<tr><td>{_esc(o.platform)}</td><td>{_esc(o)}</td><td>{o.estimate:.1f}s</td>"
                    f"<td>{_esc(o.basis)}</td><td>{actual}</td><td>{len(replans)}</td><td>{alts or '-'}</td></tr>")
    index = (f"<p>Index <code>{_esc(summary.index_digest)}</code> pushed to "
             f"{_esc(', '.join(summary.tags))}.</p>") if summary.index_digest else "<p>Nothing pushed.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>archfleet build report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
.lane {{ font: 13px monospace; }} .tick {{ font: 11px sans-serif; fill: #777; }} .label {{ font: 11px sans-serif; }}
table {{ border-collapse: collapse; margin-top: 16px; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
.legend span {{ margin-right: 16px; }}
</style></head><body>
<h1>archfleet build</h1>
<p>{len(summary.results)} platform(s) in {summary.seconds:.1f}s; planned makespan {plan.makespan:.1f}s.</p>
{index}
<p class="legend"><span>dashed outline: planned (estimate)</span><span>filled: actual</span>
<span style="color:#d62728">red: failed (a node that failed: re-planned)</span><span style="color:#999">grey: cancelled</span></p>
{''.join(parts)}
<table><thead><tr><th>platform</th><th>planned</th><th>estimate</th><th>estimate from</th><th>actual</th>
<th>re-plans</th><th>alternatives</th></tr></thead><tbody>{''.join(rows)}</tbody></table>
</body></html>
"""


def write_report(path: Path, summary, request) -> None:
    """Write :func:`render`'s page to ``path`` (UTF-8)."""
    path.write_text(render(summary, request))
