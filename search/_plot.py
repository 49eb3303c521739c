"""The Pareto plot of a search: quality against size, as a PNG (matplotlib) and as interactive HTML (inline SVG)."""

from __future__ import annotations

import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayzor.search._browse import format_bytes, size_metric
from rayzor.search._config import quality_metric
from rayzor.search._pareto import pareto_mask
from rayzor.search._records import FINISHED, TrialRecord, trial_label

__all__ = ["PlotLayout", "pareto_figure", "pareto_html", "pareto_png", "plot_layout", "size_ticks"]

#: How far below the front's (and the baseline's) quality span the y-axis may reach, as a share of the span:
#: the front keeps at least 1 / (1 + 1.5 + 0.12) of the height; trials further down are drawn at the edge.
_BELOW = 1.5
#: Smallest quality span shown (a one-point front still gets a readable axis).
_MIN_SPAN = 0.01
_GREY, _ORANGE, _GREEN = "#9aa5b1", "#d9480f", "#2b8a3e"


@dataclass(frozen=True)
class PlotPoint:
    """One finished trial on the plot: its record, size in bytes, quality."""

    record: TrialRecord
    size: float
    quality: float


@dataclass(frozen=True)
class PlotLayout:
    """What the plot shows and where: one layout for the PNG and the HTML.

    Attributes:
        quality: The quality metric (y).
        size: The size metric (x, bytes, log scale).
        xlim: The x-range in bytes: every trial and the fp32 size.
        ylim: The y-range: the front and the fp32 quality, with room below.
        xticks: Tick positions in bytes (powers of two, and 1.5x between when few).
        baseline: ``(size, quality)`` of the fp32 model.
        points: Every finished trial inside ``ylim``.
        below: Finished trials under ``ylim`` (drawn at the bottom edge).
        front: The Pareto front, smallest first.
        staircase: The front points non-dominated in this plot's two axes, smallest first.
    """

    quality: str
    size: str
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    xticks: list[float]
    baseline: tuple[float, float]
    points: list[PlotPoint]
    below: list[PlotPoint]
    front: list[PlotPoint]
    staircase: list[PlotPoint]


def size_ticks(lo: float, hi: float) -> list[float]:
    """Size ticks in bytes between ``lo`` and ``hi``: powers of two, with 1.5x steps added when fewer than 3 fit."""
    lo, hi = max(lo, 1.0), max(hi, 1.0)
    powers = [2.0**k for k in range(int(math.floor(math.log2(lo))), int(math.ceil(math.log2(hi))) + 1)]
    ticks = [t for t in powers if lo <= t <= hi]
    if len(ticks) < 3:
        ticks = sorted(t for p in powers for t in (p, 1.5 * p) if lo <= t <= hi)
    if len(ticks) > 8:  # a wide range: every other power of two
        ticks = ticks[::2]
    return ticks


def _value_ticks(lo: float, hi: float, count: int = 5) -> tuple[list[float], int]:
    """About ``count`` round ticks in ``[lo, hi]`` (steps of 1, 2, 2.5 or 5 x 10^k) and the decimals they need."""
    raw = (hi - lo) / count
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    ticks = [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]
    digits = max(0, -math.floor(math.log10(step)) + (1 if step / power == 2.5 else 0))
    return ticks, digits


def plot_layout(
    records: Sequence[TrialRecord],
    front: Sequence[TrialRecord],
    objectives: Sequence[str],
    baseline: Mapping[str, float],
) -> PlotLayout:
    """Lay out the plot: the y-range follows the front and the fp32 quality, not the worst trial."""
    quality = quality_metric(tuple(objectives))
    size = size_metric(objectives, baseline)

    def point(r: TrialRecord) -> PlotPoint | None:
        s, q = r.metrics.get(size), r.metrics.get(quality)
        if s is None or q is None or not (math.isfinite(s) and math.isfinite(q)) or s <= 0:
            return None
        return PlotPoint(r, float(s), float(q))

    done = [p for r in records if r.status == FINISHED and (p := point(r)) is not None]
    on_front = sorted(
        (p for r in front if (p := point(r)) is not None), key=lambda p: (p.size, -p.quality, p.record.number)
    )
    base = (float(baseline.get(size, baseline.get("size_bytes", 1.0))), float(baseline[quality]))
    anchor = [p.quality for p in on_front] + [base[1]]
    top, bottom = max(anchor), min(anchor)
    span = max(top - bottom, _MIN_SPAN)
    lowest = min((p.quality for p in done), default=bottom)
    ylim = (max(lowest - 0.05 * span, bottom - _BELOW * span), top + 0.12 * span)
    sizes = [p.size for p in done + on_front] + [base[0]]
    xlim = (min(sizes) / 1.3, max(sizes) * 1.3)
    staircase: list[PlotPoint] = []
    if on_front:
        mask = pareto_mask(np.array([[p.quality, p.size] for p in on_front]), ["maximize", "minimize"])
        staircase = [p for p, keep in zip(on_front, mask) if keep]
    return PlotLayout(
        quality=quality,
        size=size,
        xlim=xlim,
        ylim=ylim,
        xticks=size_ticks(*xlim),
        baseline=base,
        points=[p for p in done if p.quality >= ylim[0]],
        below=sorted((p for p in done if p.quality < ylim[0]), key=lambda p: p.quality),
        front=on_front,
        staircase=staircase,
    )


def _size_label(size: str) -> str:
    return {"deploy_bytes": "deploy artifact size", "size_bytes": "packed size"}.get(size, size)


def pareto_figure(
    records: Sequence[TrialRecord],
    front: Sequence[TrialRecord],
    objectives: Sequence[str],
    baseline: Mapping[str, float],
) -> Any:
    """The Pareto plot as a matplotlib figure: trials, the front labelled with trial numbers, the fp32 point.

    Trials below the y-range (see :func:`plot_layout`) are drawn as
    triangles on the bottom edge and counted in the legend.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    lay = plot_layout(records, front, objectives, baseline)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    ax.scatter(
        [p.size for p in lay.points],
        [p.quality for p in lay.points],
        s=18,
        c=_GREY,
        label=f"trials ({len(lay.points)})",
    )
    if lay.below:
        edge = lay.ylim[0] + 0.015 * (lay.ylim[1] - lay.ylim[0])
        ax.scatter(
            [p.size for p in lay.below],
            [edge] * len(lay.below),
            marker="v",
            s=30,
            c=_GREY,
            edgecolors="#52606d",
            label=f"{len(lay.below)} below the range (worst {lay.quality} {lay.below[0].quality:.3f})",
            zorder=3,
        )
    if lay.staircase:
        xs = [p.size for p in lay.staircase] + [lay.xlim[1]]
        ys = [p.quality for p in lay.staircase] + [lay.staircase[-1].quality]
        ax.step(xs, ys, where="post", color=_ORANGE, lw=1.3, alpha=0.8)
    ax.scatter(
        [p.size for p in lay.front],
        [p.quality for p in lay.front],
        s=40,
        c=_ORANGE,
        edgecolors="white",
        label=f"Pareto front ({len(lay.front)})",
        zorder=4,
    )
    for i, p in enumerate(lay.front):
        ax.annotate(
            f"{p.record.number:04d}",
            (p.size, p.quality),
            xytext=(5, 5 if i % 2 == 0 else -11),
            textcoords="offset points",
            fontsize=7.5,
            color="#862e09",
            zorder=5,
        )
    bsize, bq = lay.baseline
    ax.axhline(bq, color=_GREEN, ls="--", lw=1)
    ax.axvline(bsize, color=_GREEN, ls=":", lw=1)
    ax.scatter(
        [bsize],
        [bq],
        marker="*",
        s=140,
        c=_GREEN,
        zorder=5,
        label=f"fp32: {lay.quality} {bq:.4f}, {format_bytes(bsize)}",
    )
    ax.set_xscale("log")
    ax.set_xlim(*lay.xlim)
    ax.set_ylim(*lay.ylim)
    ax.xaxis.set_major_locator(FixedLocator(lay.xticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_bytes(x).replace(".0 ", " ")))
    ax.set_xlabel(f"{_size_label(lay.size)} (log scale)")
    ax.set_ylabel(f"validation {lay.quality}")
    ax.set_title(f"rayzor search: {' vs '.join(objectives)}  (labels: trial number)", fontsize=10)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def pareto_png(
    records: Sequence[TrialRecord],
    front: Sequence[TrialRecord],
    objectives: Sequence[str],
    baseline: Mapping[str, float],
) -> bytes:
    """:func:`pareto_figure` as PNG bytes."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(records, front, objectives, baseline)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _hover(p: PlotPoint, quality: str, on_front: bool) -> str:
    m = p.record.metrics
    lines = [trial_label(p.record.number) + ("  ★ Pareto-optimal" if on_front else "")]
    lines.append(f"{quality} {m[quality]:.4f}")
    for key, label in (("deploy_bytes", "deploy"), ("size_bytes", "packed")):
        if key in m:
            lines.append(f"{label} {format_bytes(m[key])} ({m[key]:.0f} bytes)")
    if "compression_ratio" in m:
        lines.append(f"compression ratio {m['compression_ratio']:.2f}x (packed vs fp32)")
    if "latency_ms" in m:
        lines.append(f"latency {m['latency_ms']:.4g} ms")
    if p.record.plan_summary:
        lines.append(f"plan {p.record.plan_summary}")
    lines.append(f"run {p.record.run_id}")
    return "\n".join(lines)


_HTML_STYLE = """
body{font:13px system-ui,-apple-system,Segoe UI,sans-serif;margin:16px;color:#1f2933}
h1{font-size:16px;margin:0 0 4px} p{margin:2px 0 10px;color:#52606d}
svg text{font-size:11px;fill:#323f4b} .axis{stroke:#52606d} .grid{stroke:#e4e7eb}
.pt{cursor:pointer} .pt:hover{stroke:#1f2933;stroke-width:2}
#tip{position:fixed;display:none;pointer-events:none;background:#fff;border:1px solid #9aa5b1;border-radius:4px;
padding:6px 8px;white-space:pre;font:12px ui-monospace,monospace;box-shadow:0 2px 6px rgba(0,0,0,.15);max-width:90vw;
overflow:hidden}
table{border-collapse:collapse;margin-top:12px} td,th{border-bottom:1px solid #e4e7eb;padding:3px 8px;text-align:right}
td:last-child,th:last-child{text-align:left;font-family:ui-monospace,monospace}
"""

_HTML_SCRIPT = """
const tip=document.getElementById('tip');
document.querySelectorAll('.pt').forEach(el=>{
  el.addEventListener('mouseenter',()=>{tip.textContent=el.dataset.tip;tip.style.display='block';});
  el.addEventListener('mousemove',e=>{
    const r=tip.getBoundingClientRect();
    let x=e.clientX+14,y=e.clientY+14;
    if(x+r.width>innerWidth)x=e.clientX-r.width-14; if(y+r.height>innerHeight)y=e.clientY-r.height-14;
    tip.style.left=Math.max(0,x)+'px';tip.style.top=Math.max(0,y)+'px';});
  el.addEventListener('mouseleave',()=>{tip.style.display='none';});
});
"""


def pareto_html(
    records: Sequence[TrialRecord],
    front: Sequence[TrialRecord],
    objectives: Sequence[str],
    baseline: Mapping[str, float],
    title: str = "rayzor search",
) -> str:
    """The Pareto plot as one self-contained HTML page (inline SVG, no network): hover a point for
    its trial, metrics, plan and run id; the front is listed below the plot.

    Each point also carries an SVG ``<title>``, so a viewer that runs no
    script still shows the text as a tooltip.
    """
    lay = plot_layout(records, front, objectives, baseline)
    width, height, left, right, top, bottom = 820, 480, 70, 20, 20, 50
    w, h = width - left - right, height - top - bottom
    lx0, lx1 = math.log(lay.xlim[0]), math.log(lay.xlim[1])

    def px(size: float) -> float:
        return left + (math.log(size) - lx0) / (lx1 - lx0) * w

    def py(q: float) -> float:
        return top + (lay.ylim[1] - q) / (lay.ylim[1] - lay.ylim[0]) * h

    esc = html.escape
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for t in lay.xticks:
        x = px(t)
        svg.append(f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h}"/>')
        label = format_bytes(t).replace(".0 ", " ")
        svg.append(f'<text x="{x:.1f}" y="{top + h + 16}" text-anchor="middle">{esc(label)}</text>')
    yticks, ydigits = _value_ticks(*lay.ylim)
    for q in yticks:
        y = py(q)
        svg.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}"/>')
        svg.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{q:.{ydigits}f}</text>')
    svg.append(f'<rect class="axis" x="{left}" y="{top}" width="{w}" height="{h}" fill="none"/>')
    svg.append(
        f'<text x="{left + w / 2}" y="{height - 8}" text-anchor="middle">{esc(_size_label(lay.size))} (log scale)</text>'
    )
    svg.append(
        f'<text transform="translate(16 {top + h / 2}) rotate(-90)" text-anchor="middle">'
        f"validation {esc(lay.quality)}</text>"
    )
    bx, by = px(lay.baseline[0]), py(lay.baseline[1])
    svg.append(
        f'<line x1="{left}" y1="{by:.1f}" x2="{left + w}" y2="{by:.1f}" stroke="{_GREEN}" stroke-dasharray="6 4"/>'
    )
    svg.append(
        f'<line x1="{bx:.1f}" y1="{top}" x2="{bx:.1f}" y2="{top + h}" stroke="{_GREEN}" stroke-dasharray="2 3"/>'
    )
    if lay.staircase:
        first = lay.staircase[0]
        path = [f"M{px(first.size):.1f} {py(first.quality):.1f}"]
        path += [f"H{px(p.size):.1f} V{py(p.quality):.1f}" for p in lay.staircase[1:]]
        path.append(f"H{left + w}")
        svg.append(f'<path d="{" ".join(path)}" fill="none" stroke="{_ORANGE}" stroke-width="1.5" opacity="0.8"/>')
    on_front = {p.record.run_id for p in lay.front}

    def marker(p: PlotPoint, shape: str) -> None:
        text = esc(_hover(p, lay.quality, p.record.run_id in on_front))
        svg.append(f'<g class="pt" data-tip="{text}"><title>{text}</title>{shape}</g>')

    for p in lay.points:
        if p.record.run_id not in on_front:
            marker(p, f'<circle cx="{px(p.size):.1f}" cy="{py(p.quality):.1f}" r="4" fill="{_GREY}"/>')
    edge = top + h - 6
    for p in lay.below:
        x = px(p.size)
        marker(
            p, f'<path d="M{x - 5:.1f} {edge - 5} H{x + 5:.1f} L{x:.1f} {edge + 4} Z" fill="{_GREY}" stroke="#52606d"/>'
        )
    for i, p in enumerate(lay.front):
        x, y = px(p.size), py(p.quality)
        marker(p, f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5.5" fill="{_ORANGE}" stroke="#fff"/>')
        dy = -8 if i % 2 == 0 else 16
        svg.append(f'<text x="{x + 7:.1f}" y="{y + dy:.1f}" fill="#862e09">{p.record.number:04d}</text>')
    base_text = esc(
        f"fp32 baseline\n{lay.quality} {lay.baseline[1]:.4f}\n{_size_label(lay.size)} {format_bytes(lay.baseline[0])}"
    )
    star = " ".join(
        f"{bx + r * math.sin(k * math.pi / 5):.1f},{by - r * math.cos(k * math.pi / 5):.1f}"
        for k, r in zip(range(10), [9, 4] * 5)
    )
    svg.append(f'<g class="pt" data-tip="{base_text}"><title>{base_text}</title>')
    svg.append(f'<polygon points="{star}" fill="{_GREEN}"/></g>')
    svg.append("</svg>")

    legend = (
        f"{len(lay.points) + len(lay.below)} finished trials (grey), the Pareto front (orange, labelled with "
        f"trial numbers), the fp32 model (green star and lines)."
    )
    if lay.below:
        legend += f" {len(lay.below)} below the range are drawn as triangles at the bottom edge."
    rows = [
        "<tr>"
        f"<td>{esc(trial_label(p.record.number))}</td><td>{p.quality:.4f}</td><td>{esc(format_bytes(p.size))}</td>"
        f"<td>{lay.baseline[0] / p.size:.1f}x</td>"
        f"<td>{esc(p.record.plan_summary)}</td></tr>"
        for p in lay.front
    ]
    table = (
        f"<table><tr><th>trial</th><th>{esc(lay.quality)}</th><th>{esc(_size_label(lay.size))}</th>"
        f"<th>smaller than fp32</th><th>plan</th></tr>{''.join(rows)}</table>"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{esc(title)}: Pareto front</title><style>{_HTML_STYLE}</style></head><body>"
        f"<h1>{esc(title)}: {esc(' vs '.join(objectives))}</h1><p>{esc(legend)} Hover a point for its trial, "
        f"metrics and plan.</p>{''.join(svg)}<div id='tip'></div>{table}"
        f"<script>{_HTML_SCRIPT}</script></body></html>\n"
    )
