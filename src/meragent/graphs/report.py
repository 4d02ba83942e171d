"""Render a run's trace: a self-contained HTML page (clip list + step timeline per clip).

The page is a Jinja2 template with autoescape on, so everything that came from users or models
(clip names, subtitles, prompts, outputs, errors) is escaped by the template engine, not by hand.
It has inline CSS, no scripts and no external resources.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache
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

_PAGE = """<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>
<title>meragent trace: {{ run.run_id }}</title><style>{{ css }}</style></head><body>
<h1>Run {{ run.run_id }}</h1>
<p>status {{ run.status }} · track {{ run.track }} · profile {{ run.profile }} ·
{{ run.n_ok }} ok, {{ run.n_degraded }} degraded, {{ run.n_failed }} failed ·
created {{ run.created_at }}</p>
{% if usage %}<pre>{{ usage }}</pre>{% endif %}
<table><tr><th>clip</th><th>status</th><th>six-class</th><th>labels</th><th>time</th></tr>
{% for clip in clips %}<tr><td><a href='#{{ clip.anchor }}'>{{ clip.record.clip_id }}</a></td>
<td class='{{ clip.record.status }}'>{{ clip.record.status }}</td>
<td>{{ clip.record.discrete or '' }}</td><td>{{ clip.labels }}</td>
<td>{{ clip.time }}</td></tr>
{% endfor %}</table>
{% for clip in clips %}{% set r = clip.record %}
<h2 id='{{ clip.anchor }}'>{{ r.clip_id }} <span class='{{ r.status }}'>[{{ r.status }}]</span></h2>
<p>six-class: <b>{{ r.discrete or '—' }}</b> · labels: <b>{{ clip.labels or '—' }}</b></p>
{% if r.description %}<p>{{ r.description }}</p>{% endif %}
{% if r.error %}<p class='err'>{{ r.stage }}: {{ r.error }}</p>{% endif %}
{% if not clip.steps %}<p class='muted'>no steps recorded</p>{% else %}
<table><tr><th>node</th><th>latency</th><th>timeline</th></tr>
{% for s in clip.steps %}<tr>
<td><b>{{ s.node }}</b><br><span class='muted'>{{ s.model_id or '' }}</span></td>
<td>{{ s.latency }}<br><span class='muted'>+{{ s.offset }}{{ s.retries }}</span></td>
<td><span style='margin-left:{{ s.left }}px;width:{{ s.width }}px' class='bar'></span>
{% if s.error %}<div class="err">error: {{ s.error }}</div>{% endif %}
{% for title, body in s.sections %}<details><summary>{{ title }}</summary><pre>{{ body }}</pre>
</details>{% endfor %}</td></tr>
{% endfor %}</table>{% endif %}
{% endfor %}</body></html>
"""


@cache
def _template() -> Any:
    from jinja2 import Environment

    return Environment(autoescape=True).from_string(_PAGE)


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


def _step_view(step: StoredStep, start: datetime, scale: float) -> dict[str, Any]:
    offset = max(0.0, (step.started_at - start).total_seconds())
    sections = [
        (title, body)
        for title, body in (
            ("inputs", _pretty(step.inputs)),
            ("prompt", _prompt_text(step.prompt)),
            ("raw output", step.raw_output or ""),
            ("parsed output", _pretty(step.parsed_output)),
        )
        if body
    ]
    return {
        "node": step.node,
        "model_id": step.model_id,
        "latency": f"{step.latency_s * 1000:.1f} ms",
        "offset": f"{offset:.3f} s",
        "retries": f", retries {step.retries}" if step.retries else "",
        "left": f"{offset * scale:.1f}",
        "width": f"{max(2.0, step.latency_s * scale):.1f}",
        "error": step.error,
        "sections": sections,
    }


def _clip_view(record: ClipRecord, steps: list[StoredStep]) -> dict[str, Any]:
    views: list[dict[str, Any]] = []
    if steps:
        start = min(s.started_at for s in steps)
        span = max((s.started_at - start).total_seconds() + s.latency_s for s in steps) or 1.0
        scale = 300.0 / span  # the timeline is 300 px wide whatever the clip took
        views = [_step_view(step, start, scale) for step in steps]
    return {
        "record": record,
        "anchor": _anchor(record.clip_id),
        "labels": ", ".join(record.openset or []),
        "time": "" if record.latency_s is None else f"{record.latency_s:.2f} s",
        "steps": views,
    }


def render_run_html(store: TraceStore, run_id: str) -> str:
    """The whole page for one run."""
    run = store.get_run(run_id)
    if run is None:
        raise DataError(f"no run {run_id!r} in {store.path}")
    clips = [_clip_view(r, store.steps(run_id, r.clip_id)) for r in store.results(run_id)]
    usage = _pretty(run.usage) if run.usage else ""
    return str(_template().render(run=run, css=_CSS, usage=usage, clips=clips))


def export_run_html(run_dir: Path, out: Path) -> Path:
    """Write the run's HTML page to ``out`` (run id = the run folder's name)."""
    with read_trace(run_dir) as store:
        page = render_run_html(store, Path(run_dir).name)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
