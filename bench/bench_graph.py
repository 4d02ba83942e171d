"""Benchmark: orchestration overhead of the clip graph and batch throughput, on fakes.

Everything model-related is faked (``graphs.fakes``: instant tools, no decoding, a scripted chat
model), so the numbers are the cost of *our* machinery: LangGraph super-steps, the trace store,
the SQLite checkpointer, the batch runner and its outputs.

* ``overhead``: ms per clip for one ``graph.invoke`` in a loop: bare graph, + trace store,
  + trace store and ``SqliteSaver`` checkpointer (the batch configuration).
* ``throughput``: ``run_batch`` over N fake clips (default 10,000) at concurrency 1 / 8 / 32,
  with instant fakes (pure orchestration) and, on fewer clips, with a simulated remote LLM /
  tool latency (``--latency-ms``), where concurrency pays off.

Run by hand (about 10-15 minutes on 2 CPU cores)::

    .venv/bin/python bench/bench_graph.py --clips 10000 --latency-clips 1000

Results go to ``bench/results/graph.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_manifest(folder: Path, n: int) -> Path:
    """A CSV manifest of ``n`` clips backed by 1-byte placeholder files (the decoder is fake)."""
    (folder / "video").mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    with manifest.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "video", "subtitle", "discrete", "openset"])
        for i in range(n):
            name = f"clip_{i:06d}"
            (folder / "video" / f"{name}.mp4").write_bytes(b"\0")
            writer.writerow([name, f"video/{name}.mp4", f"sentence {i}", "happy", "['happy']"])
    return manifest


def overhead(n_clips: int, workdir: Path) -> dict[str, float]:
    """ms/clip of sequential graph invocations in three configurations."""
    from meragent.graphs.batch import invoke_clip, open_checkpointer
    from meragent.graphs.builder import build_graph
    from meragent.graphs.fakes import fake_chat_models, fake_decoder, fake_toolset
    from meragent.graphs.trace import TraceStore
    from meragent.schema import Clip

    clips = [Clip(id=f"c{i}", video=Path("/x.mp4"), subtitle="hello") for i in range(n_clips)]
    results = {}
    configs = {
        "bare": {},
        "trace": {"trace": TraceStore(workdir / "o1.sqlite")},
        "trace_and_checkpointer": {
            "trace": TraceStore(workdir / "o2.sqlite"),
            "checkpointer": open_checkpointer(workdir / "o2-ck.sqlite"),
        },
    }
    for name, extra in configs.items():
        graph = build_graph(fake_toolset(), fake_chat_models(), decoder=fake_decoder(), **extra)
        checkpointed = "checkpointer" in extra
        for clip in clips[:20]:  # warm-up: imports, first compile paths
            invoke_clip(graph, f"warm-{name}", clip, checkpointed=checkpointed)
        started = time.perf_counter()
        for clip in clips:
            invoke_clip(graph, name, clip, checkpointed=checkpointed)
        results[name] = round((time.perf_counter() - started) / n_clips * 1000, 2)
        print(f"overhead {name}: {results[name]} ms/clip", flush=True)
    return results


def throughput(
    n_clips: int, concurrencies: list[int], workdir: Path, *, latency_s: float
) -> list[dict[str, Any]]:
    """clips/s of ``run_batch`` (trace store + checkpointer + outputs) per concurrency."""
    from meragent.config import load_settings
    from meragent.graphs.batch import BatchOptions, run_batch
    from meragent.graphs.runtime import fake_runtime

    manifest = write_manifest(workdir / f"data-{n_clips}", n_clips)
    rows = []
    for concurrency in concurrencies:
        os.environ["MERAGENT_HOME"] = str(workdir / f"home-{n_clips}-{latency_s}-{concurrency}")
        settings = load_settings()
        options = BatchOptions(concurrency=concurrency, progress=False, export_every_s=60.0)
        started = time.perf_counter()
        summary = run_batch(
            settings, manifest, "bench", options, runtime=fake_runtime(delay_s=latency_s)
        )
        elapsed = time.perf_counter() - started
        row = {
            "clips": n_clips,
            "concurrency": concurrency,
            "simulated_latency_ms": round(latency_s * 1000, 1),
            "ok": summary.n_ok,
            "failed": summary.n_failed,
            "seconds": round(elapsed, 2),
            "clips_per_s": round(n_clips / elapsed, 2),
            "ms_per_clip": round(elapsed / n_clips * 1000, 2),
        }
        rows.append(row)
        print(f"throughput {row}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=10_000, help="clips per throughput run")
    parser.add_argument("--overhead-clips", type=int, default=500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--latency-ms", type=float, default=20.0, help="simulated per-call delay")
    parser.add_argument("--latency-clips", type=int, default=1_000)
    parser.add_argument("--out", type=Path, default=RESULTS / "graph.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-graph-") as tmp:
        workdir = Path(tmp)
        report = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
            },
            "overhead_ms_per_clip": overhead(args.overhead_clips, workdir),
            "throughput_instant_fakes": throughput(
                args.clips, args.concurrency, workdir, latency_s=0.0
            ),
            "throughput_simulated_latency": throughput(
                args.latency_clips, args.concurrency, workdir, latency_s=args.latency_ms / 1000
            ),
            "notes": (
                "Fakes: no decoding, instant tools, scripted LLM. Each clip runs 9 nodes "
                "(load_media, 3 tools, reasoning, fusion, labeler, answer, evaluator) and writes "
                "9 trace rows and ~7 checkpoints. The simulated latency applies to the decoder, "
                "each tool and each LLM call (6 sleeps per clip, 4 of them sequential)."
            ),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
