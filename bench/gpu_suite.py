"""The GPU suite: the four GPU checks of issue 15 in one run, each step capped in time.

Steps, in order, each its own process with its own time cap (``--caps``; time a step leaves
unused goes to the next ones, within ``--total-s``), each writing its JSON under ``--out`` as it
goes (so a step stopped at its cap keeps what it finished):

1. ``six_class`` (``bench_six_class_gpu.py``): decoded media -> HuBERT-large + CLIP-L/14 +
   1024-d text encoder -> fusion answer, batches 16/64/256, bf16 then fp16, next to the bare
   encoders' forward passes on the same tensors;
2. ``features`` (``gpu_suite_features.py``): ``meragent data synth`` + ``meragent features
   extract`` through the CLI on 200 clips with random HuBERT-large and CLIP-L/14;
3. ``fusion`` (``gpu_suite_fusion.py``): ``meragent fusion train`` on 5,030 synthetic clips,
   50 combinations × 5 folds × 100 epochs;
4. ``lora`` (``gpu_suite_lora.py``): ``add_lora`` + ``train_lora`` next to a bare peft loop on a
   random Qwen2.5-1.5B (and 7B if time is left), then greedy generation (32 prompts × 24 tokens).

After every step the results are merged into ``<out>/gpu_suite.json`` (device name, torch,
CUDA and transformers versions, each step's status and figures, and the acceptance checks).
``--tiny`` runs everything on the CPU at toy sizes in a few minutes (a dry run of the script,
never a result). ``--publish FILE`` copies a real run's ``gpu_suite.json`` to
``bench/results/gpu_suite.json`` (refused for tiny or CPU runs). Driven by ``bench/gpu_suite.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_suite_common import device_facts, write_json

BENCH = Path(__file__).resolve().parent
RESULT = BENCH / "results" / "gpu_suite.json"
#: step -> (script, time cap in seconds on the GPU). The caps sum to 9 minutes.
STEPS: dict[str, tuple[str, float]] = {
    "six_class": ("bench_six_class_gpu.py", 140.0),
    "features": ("gpu_suite_features.py", 170.0),
    "fusion": ("gpu_suite_fusion.py", 130.0),
    "lora": ("gpu_suite_lora.py", 100.0),
}
TINY_CAP_S = 900.0


def step_args(name: str, args: argparse.Namespace, out: Path, cap: float) -> list[str]:
    """The step script's command line."""
    common = ["--device", args.device, "--out", str(out)] + (["--tiny"] if args.tiny else [])
    if name == "six_class" and not args.tiny:
        # bf16 first: batch 64 in bf16 is the figure the acceptance is judged on.
        common += ["--dtypes", "bf16", "fp16", "--batches", "16", "64", "256"]
    if name == "features":
        common += ["--cli-timeout", str(int(cap / 3))]
    if name == "fusion":
        # The CLI stops first, so the step still records its partial progress lines.
        common += ["--deadline-s", str(round(cap - min(10.0, cap * 0.2), 1))]
    if name == "lora":
        common += ["--deadline-s", str(int(cap * 0.9))]
    return common


def run_step(name: str, args: argparse.Namespace, cap: float, log: Any) -> dict[str, Any]:
    """One step in its own process group (killed whole at the cap); its status and JSON."""
    script, _ = STEPS[name]
    out = args.out / f"{name}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, str(BENCH / script), *step_args(name, args, out, cap)]
    log.write(f"\n===== {name} (cap {cap:.0f}s): {' '.join(command)}\n")
    log.flush()
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        rc: int | None = process.wait(timeout=cap)
        status = "ok" if rc == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the step and the CLI runs it started
        process.wait()
        rc, status = None, "timeout"
    entry: dict[str, Any] = {
        "status": status, "rc": rc, "wall_s": round(time.perf_counter() - started, 1),
        "cap_s": cap,
    }  # fmt: skip
    if out.is_file():
        entry["result"] = json.loads(out.read_text(encoding="utf-8"))
    if status == "ok" and not entry.get("result", {}).get("finished"):
        entry["status"] = "incomplete"  # the script ended, but its work did not
    return entry


def acceptance(steps: dict[str, Any], tiny: bool) -> dict[str, Any]:
    """The issue's acceptance figures, read off the step results (None when not measured).

    A ``--tiny`` run reads the same figures off its toy sizes (batch 8, the toy LM), so the dry
    run checks this code too; its values mean nothing.
    """
    checks: dict[str, Any] = {}
    six = steps.get("six_class", {}).get("result", {})
    batch = 8 if tiny else 64
    row: dict[str, Any] = next(
        (r for r in six.get("results", []) if r.get("dtype") == "bf16" and r.get("batch") == batch),
        {},
    )
    checks[f"six_class_bf16_b{batch}_ratio"] = {"value": row.get("ratio"), "goal": ">= 0.8"}
    fusion = steps.get("fusion", {}).get("result", {})
    checks["fusion_search_s"] = {"value": fusion.get("search_s"), "goal": "< 120"}
    model = "tiny" if tiny else "qwen2.5-1.5b"
    lora = steps.get("lora", {}).get("result", {}).get(model, {})
    checks[f"lora_{model}_ratio"] = {"value": lora.get("train", {}).get("ratio"), "goal": ">= 0.8"}
    for check, goal in zip(checks.values(), (0.8, 120.0, 0.8), strict=True):
        value = check["value"]
        check["met"] = None if value is None else (value < goal if goal > 1 else value >= goal)
    return checks


def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + args.total_s
    merged: dict[str, Any] = {
        **device_facts(args.device), "tiny": args.tiny, "finished": False, "steps": {},
    }  # fmt: skip
    path = args.out / "gpu_suite.json"
    write_json(path, merged)
    banked = 0.0  # seconds earlier steps left unused: later steps may spend them
    with (args.out / "suite.log").open("a", encoding="utf-8") as log:
        for name in args.steps:
            left = deadline - time.perf_counter()
            cap = min(args.caps.get(name, STEPS[name][1]) + banked, left - 5)
            if cap < 10:
                merged["steps"][name] = {"status": "skipped", "reason": "suite time used up"}
                continue
            merged["steps"][name] = run_step(name, args, cap, log)
            banked = max(0.0, cap - merged["steps"][name]["wall_s"])
            merged["acceptance"] = acceptance(merged["steps"], args.tiny)
            write_json(path, merged)
            print(f"{name}: {merged['steps'][name]['status']} in "
                  f"{merged['steps'][name]['wall_s']}s", flush=True)  # fmt: skip
    merged["finished"] = True
    merged["acceptance"] = acceptance(merged["steps"], args.tiny)
    write_json(path, merged)
    print(json.dumps(merged["acceptance"], indent=2))
    print(f"wrote {path}")
    return merged


def publish(source: Path) -> None:
    """Copy a real GPU run's merged JSON into ``bench/results`` (never a dry run)."""
    data = json.loads(source.read_text(encoding="utf-8"))
    if data.get("tiny") or not str(data.get("device", "")).startswith("cuda"):
        raise SystemExit(f"{source} is a --tiny or CPU run: only real GPU runs are published")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, RESULT)
    print(f"{data.get('device_name')}: copied {source} -> {RESULT}")


def parse_caps(text: str) -> dict[str, float]:
    caps = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in STEPS or not value:
            raise SystemExit(f"--caps {item!r}: expected STEP=SECONDS with STEP in {list(STEPS)}")
        caps[name] = float(value)
    return caps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU dry run at toy sizes")
    parser.add_argument("--device", default=None, help="default cuda (cpu with --tiny)")
    parser.add_argument("--out", type=Path, default=None, help="default $OUT, else a temp dir")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset")
    parser.add_argument("--caps", default="", help="STEP=SECONDS,... overrides")
    parser.add_argument("--total-s", type=float, default=None, help="default 540 (GPU)")
    parser.add_argument("--publish", type=Path, default=None, help="copy FILE to bench/results")
    args = parser.parse_args(argv)
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    if args.out is None:
        args.out = Path(os.environ.get("OUT") or Path(tempfile.gettempdir()) / "gpu_suite")
    args.steps = [s for s in args.steps.split(",") if s]
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {unknown} (choose from {', '.join(STEPS)})")
    args.caps = parse_caps(args.caps)
    if args.tiny:
        args.caps = {name: args.caps.get(name, TINY_CAP_S) for name in STEPS}
    args.total_s = args.total_s or (len(STEPS) * TINY_CAP_S if args.tiny else 540.0)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.publish is not None:
        publish(args.publish)
        return
    run_suite(args)


if __name__ == "__main__":
    main()
