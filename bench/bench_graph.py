"""Benchmark: our per-clip machinery against a bare LangGraph anchor, and batch throughput/scale.

Everything model-related is a test double (``tests/doubles/meragent_fakes.py``, imported by path
and passed explicitly as ``runtime=``): instant tools, no decoding, a scripted chat model. So the
numbers are the cost of the orchestration: LangGraph super-steps, our node wrapper and trace
rows, the SQLite checkpointer, the run session (commit, counting, exports).

* ``overhead``: ms per clip, sequentially, in the same process and interleaved rounds:
  - ``anchor``: a bare LangGraph graph of the same shape (load_media → 3 tools in one super-step
    → reasoning → fusion + labeler → answer → evaluator) whose LLM nodes call the same scripted
    chat models, with LangGraph's own ``SqliteSaver`` (WAL, synchronous=NORMAL, as ours) and a
    fresh thread per clip;
  - ``ours``: what the in-process executor does per clip: the clip graph with the trace rows
    buffered and committed with the clip's result in one transaction, the checkpointer, and the
    answered clip's thread pruned. ``ratio`` = ours / anchor (target ≤ 1.5), wall time;
    ``cpu_ratio`` the same in process CPU time (all threads), steadier on a shared machine.
* ``throughput``: ``run_batch`` over N fake clips (default 10,000) at concurrency 8, periodic
  exports on (every 15 s), clips/s as the summary prints it (target ≥ 100 clips/s), on
  ``--processes`` worker processes (default 2: the machine's cores); ``throughput_threads`` is
  the same batch on the thread executor (one process), measured just before it.
* ``scale``: the processes' run at a larger N (``--scale-clips``, default 100,000): exports are
  incremental, so clips/s should match the 10,000-clip run within 15 %.

Run by hand (the 100k run takes about half an hour on 2 busy CPU cores)::

    .venv/bin/python bench/bench_graph.py --clips 10000 --scale-clips 100000

Results go to ``bench/results/graph.json`` (with the load average before and after each part).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import operator
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def doubles() -> Any:
    """The test doubles module, imported from tests/doubles by path (nothing in src/ has them)."""
    sys.path.insert(0, str(ROOT / "tests" / "doubles"))
    import meragent_fakes

    return meragent_fakes


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


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


# --------------------------------------------------------------------------- the anchor


class AnchorState(TypedDict, total=False):
    run_id: str
    clip: dict[str, Any]
    media: dict[str, Any]
    clues: Annotated[list[dict[str, Any]], operator.add]
    description: str
    fusion: dict[str, Any]
    labels: list[str]
    prediction: dict[str, Any]
    metrics: dict[str, Any]


def anchor_graph(path: Path) -> Any:
    """A bare LangGraph graph of our graph's shape, LLM nodes on the same scripted models."""
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, StateGraph

    models = doubles().fake_chat_models()

    def load_media(state: AnchorState) -> dict[str, Any]:
        return {"media": {"duration": 1.0, "flags": []}}

    def tool(name: str) -> Any:
        def run(state: AnchorState) -> dict[str, Any]:
            return {"clues": [{"modality": name, "text": "calm", "probs": {"happy": 0.5}}]}

        return run

    def reasoning(state: AnchorState) -> dict[str, Any]:
        text = str(state["clip"].get("subtitle"))
        return {"description": models["reasoning"].invoke([HumanMessage(text)]).content}

    def labeler(state: AnchorState) -> dict[str, Any]:
        reply = models["labeler"].invoke([HumanMessage(state["description"])]).content
        return {"labels": [str(reply)]}

    def fusion(state: AnchorState) -> dict[str, Any]:
        return {"fusion": {"discrete": "happy"}}

    def answer(state: AnchorState) -> dict[str, Any]:
        return {"prediction": {"discrete": "happy", "openset": state.get("labels", [])}}

    def evaluator(state: AnchorState) -> dict[str, Any]:
        return {"metrics": {"hit": 1.0}}

    graph = StateGraph(AnchorState)
    graph.add_node("load_media", load_media)
    for name in ("acoustic", "visual", "lexical"):
        graph.add_node(name, tool(name))
        graph.add_edge("load_media", name)
    for name, node in (("reasoning", reasoning), ("fusion", fusion), ("labeler", labeler)):
        graph.add_node(name, node)
    graph.add_node("answer", answer)
    graph.add_node("evaluator", evaluator)
    graph.add_edge(START, "load_media")
    graph.add_edge(["acoustic", "visual", "lexical"], "reasoning")
    graph.add_edge("reasoning", "fusion")
    graph.add_edge("reasoning", "labeler")
    graph.add_edge(["fusion", "labeler"], "answer")
    graph.add_edge("answer", "evaluator")
    graph.add_edge("evaluator", END)
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return graph.compile(checkpointer=SqliteSaver(conn))


# --------------------------------------------------------------------------- overhead


def _clips(prefix: str, n: int) -> list[Any]:
    from meragent.schema import Clip

    return [
        Clip(id=f"{prefix}{i}", video=Path("/x.mp4"), subtitle=f"sentence {i}",
             discrete="happy", openset=["happy"])
        for i in range(n)
    ]  # fmt: skip


def _time_anchor(graph: Any, clips: list[Any]) -> tuple[float, float]:
    """(wall, CPU) ms per clip of the anchor."""
    started, cpu = time.perf_counter(), time.process_time()
    for clip in clips:
        state = {"run_id": "a", "clip": clip.model_dump(mode="json")}
        graph.invoke(state, {"configurable": {"thread_id": clip.id}})
    return _per_clip(started, cpu, len(clips))


def _per_clip(started: float, cpu: float, n: int) -> tuple[float, float]:
    """Wall and process CPU ms per clip since ``started`` / ``cpu`` (CPU: every thread's)."""
    return (
        (time.perf_counter() - started) / n * 1000,
        (time.process_time() - cpu) / n * 1000,
    )


def _ours(workdir: Path) -> Any:
    """A function running one clip exactly as the in-process executor does."""
    from meragent.graphs.batch import _ClipRunner, _Pruner, open_checkpointer, thread_id
    from meragent.graphs.session import BatchOptions
    from meragent.graphs.trace import TraceStore

    store = TraceStore(workdir / "ours.sqlite")
    store.start_run("o", track="all")
    checkpointer = open_checkpointer(workdir / "ours-ck.sqlite")
    runner = _ClipRunner(doubles().fake_run_deps(), "o", BatchOptions(), checkpointer)
    pruner = _Pruner(checkpointer)

    def one(seq: int, clip: Any) -> None:
        result = runner.run(seq, clip)
        store.commit_clip("o", result)
        pruner.add(thread_id("o", clip.id))

    return one


def _time_ours(one: Any, clips: list[Any]) -> tuple[float, float]:
    """(wall, CPU) ms per clip of ours."""
    started, cpu = time.perf_counter(), time.process_time()
    for seq, clip in enumerate(clips):
        one(seq, clip)
    return _per_clip(started, cpu, len(clips))


def overhead(n_clips: int, rounds: int, workdir: Path) -> dict[str, Any]:
    """Median ms/clip of the anchor and of ours over interleaved rounds (same load for both).

    Wall time is what the target is about; process CPU time (all threads) is given beside it
    because on a shared machine the wall time of both grows with the load.
    """
    anchor = anchor_graph(workdir / "anchor.sqlite")
    ours = _ours(workdir)
    _time_anchor(anchor, _clips("warm-a", 20))
    _time_ours(ours, _clips("warm-o", 20))
    anchor_ms, ours_ms = [], []
    before = load()
    for r in range(rounds):
        anchor_ms.append(_time_anchor(anchor, _clips(f"a{r}-", n_clips)))
        ours_ms.append(_time_ours(ours, _clips(f"o{r}-", n_clips)))
    result: dict[str, Any] = {"clips_per_round": n_clips, "rounds": rounds}
    for kind, index in (("", 0), ("cpu_", 1)):
        anchor_median = statistics.median(x[index] for x in anchor_ms)
        ours_median = statistics.median(x[index] for x in ours_ms)
        result[f"anchor_{kind}ms_per_clip"] = round(anchor_median, 2)
        result[f"ours_{kind}ms_per_clip"] = round(ours_median, 2)
        result[f"{kind}ratio"] = round(ours_median / anchor_median, 3)
    result["anchor_rounds"] = [round(x[0], 2) for x in anchor_ms]
    result["ours_rounds"] = [round(x[0], 2) for x in ours_ms]
    result["load_avg_before"], result["load_avg_after"] = before, load()
    print(f"overhead: anchor {result['anchor_ms_per_clip']} ms/clip, ours "
          f"{result['ours_ms_per_clip']} ms/clip, ratio {result['ratio']} (CPU: anchor "
          f"{result['anchor_cpu_ms_per_clip']}, ours {result['ours_cpu_ms_per_clip']}, "
          f"ratio {result['cpu_ratio']}); load {before} -> {result['load_avg_after']}",
          flush=True)  # fmt: skip
    return result


# --------------------------------------------------------------------------- throughput


def throughput(n_clips: int, concurrency: int, workdir: Path, processes: int = 1) -> dict[str, Any]:
    """clips/s of ``run_batch`` (trace store, checkpointer, periodic exports) on ``n_clips``.

    ``processes`` 1: the thread executor, on the doubles passed as ``runtime=``; more: the worker
    processes, which build the same doubles from a profile naming them.
    """
    from meragent.config import load_settings
    from meragent.graphs.batch import BatchOptions, run_batch

    manifest = write_manifest(workdir / f"data-{n_clips}", n_clips)
    os.environ["MERAGENT_HOME"] = str(workdir / f"home-{n_clips}-{concurrency}-{processes}")
    runtime = None
    if processes > 1:
        os.environ["MERAGENT_PROFILE"] = str(doubles().write_fake_profile(workdir / "fake.toml"))
    else:
        os.environ.pop("MERAGENT_PROFILE", None)
        runtime = doubles().fake_run_deps()
    settings = load_settings()
    options = BatchOptions(
        concurrency=concurrency, progress=False, export_every_s=15.0, processes=processes
    )
    before = load()
    started = time.perf_counter()
    with _RateProfile(settings.runs_dir / "bench" / "trace.sqlite") as profile:
        summary = run_batch(settings, manifest, "bench", options, runtime=runtime)
    elapsed = time.perf_counter() - started
    row: dict[str, Any] = {
        "clips": n_clips,
        "concurrency": concurrency,
        "processes": processes,
        "ok": summary.n_ok,
        "failed": summary.n_failed,
        "clips_per_s": round(summary.clips_per_s, 2),
        "seconds_on_clips": round(summary.throughput.seconds, 2),
        "seconds_in_all": round(elapsed, 2),
        "load_avg_before": before,
        "load_avg_after": load(),
        "clips_per_s_by_minute": profile.rates(),
    }
    print(f"throughput {row}", flush=True)
    return row


class _RateProfile:
    """Clips committed per minute of a run, read from its trace store (does a run slow down?)."""

    def __init__(self, trace: Path, every_s: float = 60.0) -> None:
        self.trace, self.every_s = trace, every_s
        self.counts: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> _RateProfile:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(self.every_s):
            try:  # MAX(rowid) is one index lookup, whatever the store's size
                with sqlite3.connect(f"file:{self.trace}?mode=ro", uri=True, timeout=5) as conn:
                    row = conn.execute("SELECT MAX(rowid) FROM clip_result").fetchone()
                self.counts.append(int(row[0] or 0))
            except sqlite3.Error:
                self.counts.append(self.counts[-1] if self.counts else 0)

    def rates(self) -> list[float]:
        done = [0, *self.counts]
        return [round((b - a) / self.every_s, 1) for a, b in itertools.pairwise(done)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clips", type=int, default=10_000, help="clips of the throughput run (0: skip it)"
    )
    parser.add_argument("--scale-clips", type=int, default=100_000, help="0: skip the scale run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--skip-threads", action="store_true", help="no thread-executor run before the processes'"
    )
    parser.add_argument(
        "--processes", type=int, default=2, help="worker processes of the process runs"
    )
    parser.add_argument("--overhead-clips", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="0: skip the overhead part")
    parser.add_argument("--out", type=Path, default=RESULTS / "graph.json")
    args = parser.parse_args()

    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_avg_at_start": load(),
        },
    }
    with tempfile.TemporaryDirectory(prefix="bench-graph-") as tmp:
        workdir = Path(tmp)
        if args.rounds:
            report["overhead"] = overhead(args.overhead_clips, args.rounds, workdir)
        if args.clips:
            if not args.skip_threads:
                report["throughput_threads"] = throughput(args.clips, args.concurrency, workdir)
                _save(args.out, report)  # keep what is measured if a long run is cut short
            small = report["throughput"] = throughput(
                args.clips, args.concurrency, workdir, args.processes
            )
        _save(args.out, report)
        if args.clips and args.scale_clips:
            big = throughput(args.scale_clips, args.concurrency, workdir, args.processes)
            report["scale"] = {
                "small_clips": small["clips"],
                "large": big,
                "large_over_small_clips_per_s": round(big["clips_per_s"] / small["clips_per_s"], 3),
            }
    report["machine"]["load_avg_at_end"] = load()
    report["notes"] = (
        "Doubles: no decoding, instant tools, scripted LLM (tests/doubles/meragent_fakes.py). "
        "Each clip runs 9 nodes (load_media, 3 tools, reasoning, fusion, labeler, answer, "
        "evaluator). The machine is shared: compare the anchor and ours of the same run, and "
        "read clips/s with the load averages beside them."
    )
    _save(args.out, report)
    print(f"wrote {args.out}")


def _save(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
