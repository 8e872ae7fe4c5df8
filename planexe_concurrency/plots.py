"""Timelines (Gantt charts) and sweep plots for the benchmark.

A timeline has one lane per worker process; each task is a bar, and the calls a task made
concurrently are thin bars inside it. :func:`gantt_html` writes a self-contained page
(inline SVG, no scripts, no network); :func:`gantt_png` draws the same with matplotlib
(the ``plot`` extra), for the README.
"""
from __future__ import annotations

import html
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .events import ItemEvent, ItemState
from .timing import TaskSpan


@dataclass(frozen=True)
class ItemSpan:
    task: str
    item: int
    start: float
    end: float
    pid: int


def item_spans(events: Iterable[ItemEvent]) -> list[ItemSpan]:
    """Pair each item's first ``running`` with its ``completed``/``failed`` (cached items are left out)."""
    started: dict[tuple[str, int, int], float] = {}
    spans = []
    for e in sorted(events, key=lambda e: e.time):
        key = (e.task, e.item, e.pid)
        if e.state is ItemState.RUNNING:
            started.setdefault(key, e.time)
        elif e.state in (ItemState.COMPLETED, ItemState.FAILED) and key in started:
            spans.append(ItemSpan(e.task, e.item, started.pop(key), e.time, e.pid))
    return spans


def _colour(name: str) -> str:
    hue = zlib.crc32(name.encode()) % 360
    return f"hsl({hue}, 55%, 62%)"


def _lanes(spans: Sequence[TaskSpan]) -> dict[int, int]:
    """Lane per task process: the first lane free when it starts (Luigi forks one child per
    task, so a lane is a worker slot, not a pid). Items find their task's lane by pid."""
    lane_free_at: list[float] = []
    lanes: dict[int, int] = {}
    for s in sorted(spans, key=lambda s: s.start):
        for i, free_at in enumerate(lane_free_at):
            if free_at <= s.start + 1e-6:
                lane_free_at[i] = s.end
                break
        else:
            lane_free_at.append(s.end)
            i = len(lane_free_at) - 1
        lanes[s.pid] = i
    return lanes


def gantt_html(title: str, spans: Sequence[TaskSpan], items: Sequence[ItemSpan] = ()) -> str:
    """A self-contained HTML page with an SVG timeline."""
    if not spans:
        return f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><p>No tasks ran.</p>"
    t0 = min(s.start for s in spans)
    t1 = max(s.end for s in spans)
    lanes = _lanes(spans)
    n_lanes = max(lanes.values()) + 1
    width, left, lane_h, top = 1200, 90, 34, 40
    scale = (width - left - 20) / max(t1 - t0, 1e-9)
    height = top + lane_h * n_lanes + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="20" font-size="14">{html.escape(title)} — {t1 - t0:.1f} s, {len(spans)} tasks, '
        f"{n_lanes} worker lane(s)</text>",
    ]
    for lane in range(n_lanes):
        y = top + lane * lane_h
        parts.append(f'<text x="4" y="{y + 20}">worker {lane + 1}</text>')
    for s in spans:
        x = left + (s.start - t0) * scale
        w = max(1.0, (s.end - s.start) * scale)
        y = top + lanes[s.pid] * lane_h
        label = html.escape(f"{s.task}: {s.duration:.2f} s{'' if s.ok else ' (failed)'}")
        parts.append(
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{lane_h - 6}" fill="{_colour(s.task)}" '
            f'stroke="#333" stroke-width="0.5"><title>{label}</title></rect>'
        )
    for it in items:
        if it.pid not in lanes:
            continue
        x = left + (it.start - t0) * scale
        w = max(1.0, (it.end - it.start) * scale)
        y = top + lanes[it.pid] * lane_h + 4 + (it.item % 6) * 4
        parts.append(
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="3" fill="#222">'
            f"<title>{html.escape(f'{it.task} item {it.item + 1}: {it.end - it.start:.2f} s')}</title></rect>"
        )
    axis_y = top + lane_h * n_lanes + 14
    step = max(1, round((t1 - t0) / 10))
    tick = 0
    while tick <= t1 - t0:
        x = left + tick * scale
        parts.append(f'<text x="{x:.1f}" y="{axis_y}">{tick}s</text>')
        tick += step
    parts.append("</svg>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>" + "".join(parts) + "</body></html>"
    )


def gantt_png(path: str | Path, runs: Sequence[tuple[str, Sequence[TaskSpan], Sequence[ItemSpan]]]) -> None:
    """One panel per run (e.g. before and after), sharing the time axis so the gain is visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    longest = max((max(s.end for s in spans) - min(s.start for s in spans)) for _, spans, _ in runs if spans)
    n_lanes = [max(_lanes(spans).values()) + 1 for _, spans, _ in runs]
    fig, axes = plt.subplots(
        len(runs), 1, figsize=(12, 1.0 + 0.9 * len(runs) + 0.35 * sum(n_lanes)), squeeze=False,
        gridspec_kw={"height_ratios": [n + 1 for n in n_lanes]},
    )
    for ax, (title, spans, items) in zip(axes[:, 0], runs):
        t0 = min(s.start for s in spans)
        lanes = _lanes(spans)
        for s in spans:
            ax.barh(lanes[s.pid], s.end - s.start, left=s.start - t0, height=0.8, color=_hsl_to_rgb(_colour(s.task)), edgecolor="#333", linewidth=0.3)
        for it in items:
            if it.pid in lanes:
                ax.barh(lanes[it.pid] - 0.3 + (it.item % 6) * 0.1, it.end - it.start, left=it.start - t0, height=0.06, color="#222")
        wall = max(s.end for s in spans) - t0
        ax.set_title(f"{title}: {wall:.1f} s", loc="left", fontsize=10)
        ax.set_xlim(0, longest * 1.02)
        count = max(lanes.values()) + 1
        ax.set_yticks(range(count))
        ax.set_yticklabels([f"worker {i + 1}" for i in range(count)], fontsize=7)
        ax.invert_yaxis()
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _hsl_to_rgb(hsl: str) -> tuple[float, float, float]:
    import colorsys

    h, s, l = (float(v.strip().rstrip("%")) for v in hsl[4:-1].split(","))
    r, g, b = colorsys.hls_to_rgb(h / 360, l / 100, s / 100)
    return (r, g, b)


def sweep_png(path: str | Path, rows: Sequence[dict[str, float]]) -> None:
    """Speed-up against max_parallel, one line per worker count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for workers in sorted({int(r["workers"]) for r in rows}):
        pts = sorted((r["max_parallel"], r["speedup"]) for r in rows if int(r["workers"]) == workers)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{workers} worker(s)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("max_parallel (LLM calls in flight per task)")
    ax.set_ylabel("speed-up over sequential")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_timeline(state_dir: str | Path, title: str, out: str | Path | None = None, *, png: bool = True) -> list[Path]:
    """The Gantt picture of one run from its event files: ``timeline.html`` and, with matplotlib
    and ``png``, ``timeline.png`` (in ``out``, default the run's state folder). Returns what was
    written. (Drawing the PNG costs ~1.5 s, mostly importing matplotlib: the end of every run
    writes the HTML only.)"""
    from .events import read_events
    from .resume import atomic_write_text
    from .timing import read_task_spans

    state_dir = Path(state_dir)
    out_dir = Path(out) if out is not None else state_dir
    tasks, events = state_dir / "tasks.jsonl", state_dir / "events.jsonl"
    spans = read_task_spans(tasks) if tasks.exists() else []
    items = item_spans(read_events(events)) if events.exists() else []
    written = [out_dir / "timeline.html"]
    atomic_write_text(written[0], gantt_html(title, spans, items))
    if spans and png:
        try:
            gantt_png(out_dir / "timeline.png", [(title, spans, items)])
            written.append(out_dir / "timeline.png")
        except ImportError:  # matplotlib is the optional 'plot' extra
            pass
    return written
