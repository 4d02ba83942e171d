"""GPU suite step: ``meragent features extract`` through the real CLI on synthetic clips.

``meragent data synth`` writes the clips (several processes at once); random-weight
HuBERT-large and CLIP-L/14 (configs from ``bench_six_class_gpu``, the real sizes) are saved with
``save_pretrained`` to a temp folder and named as ``hubert:DIR`` / ``clip:DIR``. Each encoder runs
twice through the CLI, each time into an empty feature cache: once on the first ``--subset``
clips, once on all of them. The difference of the two wall times removes interpreter start,
imports and model loading, so ``marginal_clips_per_s = (N - subset) / (wall_all - wall_subset)``
is the steady extraction rate (decode, face crops, forward passes, one ``.npy`` per clip);
``gross_clips_per_s`` counts everything. The encoders run in float32 (what ``KIND:MODEL``
extraction loads), at the batch the executors use (16 clips). Compare the marginal rate with the
six-class bench, whose path starts from decoded media (no decoding, no face detection).

Usage: ``python bench/gpu_suite_features.py --out features.json [--tiny] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gpu_suite_common import Recorder, cli_ok, device_facts, release_memory, run_cli, without_stdout

#: Clips per forward pass in the in-process and Ray executors (``encoder_batch_size``).
EXECUTOR_BATCH = 16


def save_random_encoders(folder: Path, tiny: bool, device: str) -> dict[str, Path]:
    """Random HuBERT-large and CLIP-L/14 (or toy ones) saved as loadable model folders."""
    import torch
    from bench_six_class_gpu import CROP, SAMPLE_RATE, clip_config, hubert_config
    from transformers import (
        CLIPImageProcessor,
        CLIPModel,
        HubertModel,
        Wav2Vec2FeatureExtractor,
    )

    torch.manual_seed(0)
    hubert_dir, clip_dir = folder / "chinese-hubert-large", folder / "clip-vit-large-patch14"
    with torch.device(device):  # initialising on the GPU is much faster than on the host
        hubert = HubertModel(hubert_config(tiny))
    hubert.save_pretrained(hubert_dir)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, do_normalize=True, return_attention_mask=True
    ).save_pretrained(hubert_dir)
    del hubert
    with torch.device(device):
        clip = CLIPModel(clip_config(tiny))
    clip.save_pretrained(clip_dir)
    side = 32 if tiny else CROP
    CLIPImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    ).save_pretrained(clip_dir)
    del clip
    release_memory(device)
    return {"acoustic": hubert_dir, "visual": clip_dir}


def synthesize(folder: Path, n: int, timeout_s: float) -> dict[str, Any]:
    """``meragent data synth`` in parallel parts (it writes one clip at a time), one manifest.

    Part ``k`` gets seed ``k`` and writes ``folder/pK/``; the joint ``folder/manifest.csv``
    prefixes each name with its part so names stay unique.
    """
    parts = max(1, min(8, (os.cpu_count() or 2) // 2, n))
    sizes = [n // parts + (k < n % parts) for k in range(parts)]
    started = time.perf_counter()
    with ThreadPoolExecutor(parts) as pool:
        runs = list(
            pool.map(
                lambda k: run_cli(
                    [
                        "data",
                        "synth",
                        str(folder / f"p{k}"),
                        "--n",
                        str(sizes[k]),
                        "--seed",
                        str(k),
                    ],
                    timeout_s=timeout_s,
                ),
                range(parts),
            )
        )
    result: dict[str, Any] = {"parts": parts, "wall_s": round(time.perf_counter() - started, 2)}
    failed = [without_stdout(r) for r in runs if not cli_ok(r)]
    if failed:
        result["error"] = failed[0]
        return result
    rows: list[dict[str, str]] = []
    for k in range(parts):
        with (folder / f"p{k}" / "manifest.csv").open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                row["name"] = f"p{k}_{row['name']}"
                row["video"] = f"p{k}/{row['video']}"
                rows.append(row)
    with (folder / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    result["clips"] = len(rows)
    return result


def subset_manifest(manifest: Path, n: int) -> Path:
    """The first ``n`` rows of a manifest, beside it (so relative paths still resolve)."""
    with manifest.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    out = manifest.with_name(f"first{n}.csv")
    with out.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows[: n + 1])
    return out


def extract(
    manifest: Path, encoder: str, home: Path, args: argparse.Namespace, timeout_s: float
) -> dict[str, Any]:
    cli = [
        "features", "extract", str(manifest), "--encoder", encoder,
        "--device", args.device, "--batch-size", str(args.batch_size), "--home", str(home),
    ]  # fmt: skip
    result = run_cli(cli, timeout_s=timeout_s)
    if cli_ok(result):
        result["summary"] = json.loads(result["stdout"])
    return without_stdout(result)


def measure_encoder(
    kind: str, encoder: str, manifests: tuple[Path, Path], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """Subset run, then the full run; the rates from their wall times."""
    small, full = manifests
    row: dict[str, Any] = {"encoder": encoder.split(":", 1)[0], "dtype": "float32"}
    row["subset"] = extract(small, encoder, work / f"home-{kind}-subset", args, args.cli_timeout)
    row["all"] = extract(full, encoder, work / f"home-{kind}-all", args, args.cli_timeout)
    if not (cli_ok(row["subset"]) and cli_ok(row["all"])):
        row["error"] = "a CLI run failed (see rc and stderr_tail)"
        return row
    n_all = row["all"]["summary"]["extracted"]
    n_small = row["subset"]["summary"]["extracted"]
    extra_s = row["all"]["wall_s"] - row["subset"]["wall_s"]
    row["clips"] = n_all
    row["failed"] = row["all"]["summary"]["failed"]
    row["gross_clips_per_s"] = round(n_all / row["all"]["wall_s"], 2)
    if extra_s > 0 and n_all > n_small:
        row["marginal_clips_per_s"] = round((n_all - n_small) / extra_s, 2)
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="result JSON path")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy encoders, 8 clips")
    parser.add_argument("--clips", type=int, default=None, help="default 200 (8 with --tiny)")
    parser.add_argument("--subset", type=int, default=None, help="default 16 (4 with --tiny)")
    parser.add_argument("--batch-size", type=int, default=EXECUTOR_BATCH)
    parser.add_argument("--cli-timeout", type=float, default=300.0, help="seconds per CLI run")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder")
    args = parser.parse_args(argv)
    args.clips = args.clips or (8 if args.tiny else 200)
    args.subset = min(args.subset or (4 if args.tiny else 16), args.clips - 1)
    return args


def run(args: argparse.Namespace, work: Path) -> None:
    record = Recorder(args.out, **device_facts(args.device), tiny=args.tiny)
    record.set("settings", {"clips": args.clips, "subset": args.subset, "batch": args.batch_size})
    started = time.perf_counter()
    synth = synthesize(work / "clips", args.clips, args.cli_timeout)
    record.set("synth", synth)
    if "error" in synth:
        return
    manifest = work / "clips" / "manifest.csv"
    manifests = (subset_manifest(manifest, args.subset), manifest)
    t0 = time.perf_counter()
    models = save_random_encoders(work / "models", args.tiny, args.device)
    record.set("save_models_s", round(time.perf_counter() - t0, 1))
    for kind, folder in models.items():
        prefix = "hubert" if kind == "acoustic" else "clip"
        record.set(kind, measure_encoder(kind, f"{prefix}:{folder}", manifests, args, work))
    record.set("step_s", round(time.perf_counter() - started, 1))
    record.finish()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(args, args.workdir)
        return
    with tempfile.TemporaryDirectory(prefix="gpu-suite-features-") as work:
        run(args, Path(work))


if __name__ == "__main__":
    main()
