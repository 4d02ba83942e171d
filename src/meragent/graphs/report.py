"""Render a run's trace: a self-contained HTML page (clip list + step timeline per clip).

Everything that came from users or models (clip names, subtitles, prompts, outputs, errors) goes
through ``html.escape``; the page has inline CSS, no scripts and no external resources.
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from meragent.errors import DataError
from meragent.graphs.trace import ClipRecord, StoredStep, TraceStore, read_trace

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:72rem}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2.5rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse}td,th{padding:.25rem .6rem;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}.ok{color:#176f2c}.failed{color:#b00020}
.bar{background:#4a7bd0;height:.7rem;border-radius:2px;display:inline-block}
.err{color:#b00020}details{margin:.2rem 0 .6rem 1rem}pre{white-space:pre-wrap;
background:#f6f6f6;padding:.5rem;max-height:24rem;overflow:auto;font-size:.85rem}
.muted{color:#777}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _pretty(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _anchor(clip_id: str) -> str:
    return "clip-" + "".join(c if c.isalnum() or c in "-_" else f"_{ord(c):x}" for c in clip_id)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        return "\n\n".join(
            f"[{m.get('role', '?')}]\n{m.get('content', '')}" if isinstance(m, dict) else str(m)
            for m in prompt
        )
    return _pretty(prompt)


def _step_html(step: StoredStep, start: datetime, scale: float) -> str:
    offset = max(0.0, (step.started_at - start).total_seconds())
    left = offset * scale
    width = max(2.0, step.latency_s * scale)
    sections = []
    for title, body in (
        ("inputs", _pretty(step.inputs)),
        ("prompt", _prompt_text(step.prompt)),
        ("raw output", step.raw_output or ""),
        ("parsed output", _pretty(step.parsed_output)),
    ):
        if body:
            sections.append(
                f"<details><summary>{_e(title)}</summary><pre>{_e(body)}</pre></details>"
            )
    error = f'<div class="err">error: {_e(step.error)}</div>' if step.error else ""
    return (
        "<tr>"
        f"<td><b>{_e(step.node)}</b><br><span class='muted'>{_e(step.model_id)}</span></td>"
        f"<td>{step.latency_s * 1000:.1f} ms<br><span class='muted'>+{offset:.3f} s"
        f"{f', retries {step.retries}' if step.retries else ''}</span></td>"
        f"<td><span style='margin-left:{left:.1f}px;width:{width:.1f}px' class='bar'></span>"
        f"{error}{''.join(sections)}</td>"
        "</tr>"
    )


def _clip_html(record: ClipRecord, steps: list[StoredStep]) -> str:
    header = (
        f"<h2 id='{_anchor(record.clip_id)}'>{_e(record.clip_id)} "
        f"<span class='{_e(record.status)}'>[{_e(record.status)}]</span></h2>"
    )
    facts = (
        f"<p>six-class: <b>{_e(record.discrete or '—')}</b> · labels: "
        f"<b>{_e(', '.join(record.openset or []) or '—')}</b></p>"
    )
    if record.description:
        facts += f"<p>{_e(record.description)}</p>"
    if record.error:
        facts += f"<p class='err'>{_e(record.stage)}: {_e(record.error)}</p>"
    if not steps:
        return header + facts + "<p class='muted'>no steps recorded</p>"
    start = min(s.started_at for s in steps)
    span = max((s.started_at - start).total_seconds() + s.latency_s for s in steps) or 1.0
    scale = 300.0 / span  # the timeline is 300 px wide whatever the clip took
    rows = "".join(_step_html(step, start, scale) for step in steps)
    table = f"<table><tr><th>node</th><th>latency</th><th>timeline</th></tr>{rows}</table>"
    return header + facts + table


def render_run_html(store: TraceStore, run_id: str) -> str:
    """The whole page for one run."""
    run = store.get_run(run_id)
    if run is None:
        raise DataError(f"no run {run_id!r} in {store.path}")
    records = store.results(run_id)
    listing = "".join(
        f"<tr><td><a href='#{_anchor(r.clip_id)}'>{_e(r.clip_id)}</a></td>"
        f"<td class='{_e(r.status)}'>{_e(r.status)}</td><td>{_e(r.discrete or '')}</td>"
        f"<td>{_e(', '.join(r.openset or []))}</td>"
        f"<td>{'' if r.latency_s is None else f'{r.latency_s:.2f} s'}</td></tr>"
        for r in records
    )
    clips = "".join(_clip_html(r, store.steps(run_id, r.clip_id)) for r in records)
    summary = (
        f"<p>status {_e(run.status)} · track {_e(run.track)} · profile {_e(run.profile)} · "
        f"{run.n_ok} ok, {run.n_degraded} degraded, {run.n_failed} failed · "
        f"created {_e(run.created_at)}</p>"
    )
    usage = f"<pre>{_e(_pretty(run.usage))}</pre>" if run.usage else ""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>meragent trace: {_e(run_id)}</title><style>{_CSS}</style></head><body>"
        f"<h1>Run {_e(run_id)}</h1>{summary}{usage}"
        "<table><tr><th>clip</th><th>status</th><th>six-class</th><th>labels</th>"
        f"<th>time</th></tr>{listing}</table>{clips}</body></html>"
    )


def export_run_html(run_dir: Path, out: Path) -> Path:
    """Write the run's HTML page to ``out`` (run id = the run folder's name)."""
    with read_trace(run_dir) as store:
        page = render_run_html(store, Path(run_dir).name)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
