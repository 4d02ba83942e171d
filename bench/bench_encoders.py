"""Benchmark: clips/s of the HuBERT and CLIP encoders through our code vs the bare model forward.

Models have the real architecture sizes (HuBERT-large: 24 layers × 1024; CLIP ViT-L/14: 24
vision layers × 1024 at 224 px, 768-d projection) with random weights: the cost is the real one,
and no download is needed. "ours" is the full path a clip takes in ``meragent`` (feature
extractor / image processor, 10 s chunking, sum of the last 4 layers, pooling, numpy out);
"bare" is only ``model(...)`` / ``get_image_features(...)`` on the same preprocessed tensors.
The ratio bare/ours is the throughput share our overhead leaves.

Run by hand::

    .venv/bin/python bench/bench_encoders.py --device cpu --batch-sizes 1 16

Results go to ``bench/results/encoders_<device>.json``.

``--mode compare`` measures, in the same run and through the tools' own batch path
(``tools.encoding.encode_payloads``, what ``encode_clips`` and the Ray encoder stage call):
clips/s at encoder batch 1 and N (issue 12), fp32 and bf16 (autocast, issue 13), and the cosine
similarity of each clip's pooled bf16 embedding to its fp32 one, on synthetic clips (spoken
sentences from ``data.synth`` and talking-face frames). Configurations are timed alternately,
``--repeats`` rounds (every other one reversed), median taken, so a shared machine's load
slows them alike; the 1-minute load average before and after is recorded. The result is
merged into the JSON under ``compare_<model>`` keys (other keys are kept)::

    .venv/bin/python bench/bench_encoders.py --mode compare --clips 8 --encoder-batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def build_hubert_large(folder: Path) -> None:
    """A randomly initialised HuBERT-large (chinese-hubert-large's architecture) + extractor."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    config = HubertConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
    )
    HubertModel(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, do_normalize=True, return_attention_mask=True
    ).save_pretrained(folder)


def build_clip_large(folder: Path) -> None:
    """A randomly initialised CLIP ViT-L/14 (openai/clip-vit-large-patch14's shape) + processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config={
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
        },
        vision_config={
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "image_size": 224,
            "patch_size": 14,
        },
        projection_dim=768,
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    ).save_pretrained(folder)


def timed_pair(
    ours: Callable[[], Any], bare: Callable[[], Any], repeats: int
) -> tuple[float, float]:
    """Median seconds of ``ours`` and ``bare`` after one warm-up each.

    The two are run alternately, so a noisy (shared) machine slows both alike and the ratio
    stays meaningful even when the absolute numbers drift.
    """
    ours()
    bare()
    times: dict[str, list[float]] = {"ours": [], "bare": []}
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("bare", bare)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return float(np.median(times["ours"])), float(np.median(times["bare"]))


def bench_hubert(folder: Path, device: str, batch: int, audio_s: float, repeats: int) -> dict:
    import torch

    from meragent.tools.acoustic_encoder import load_acoustic_encoder

    encoder = load_acoustic_encoder(str(folder), device=device)
    rng = np.random.default_rng(0)
    audios = [(0.1 * rng.standard_normal(int(audio_s * 16000))).astype(np.float32)] * batch
    inputs = encoder.feature_extractor(
        audios, sampling_rate=16000, return_tensors="pt", return_attention_mask=True
    )
    values, mask = inputs["input_values"].to(device), inputs["attention_mask"].to(device)

    def bare() -> None:
        with torch.inference_mode():
            encoder.model(values, attention_mask=mask, output_hidden_states=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def ours() -> None:
        encoder.encode_many(audios, batch_size=batch)

    return _row("hubert-large", batch, *timed_pair(ours, bare, repeats), audio_s=audio_s)


def bench_clip(folder: Path, device: str, batch: int, frames: int, repeats: int) -> dict:
    import torch

    from meragent.tools.clip_encoder import load_clip_encoder

    encoder = load_clip_encoder(str(folder), device=device)
    rng = np.random.default_rng(0)
    clip_frames = (rng.random((frames, 224, 224, 3)) * 255).astype(np.uint8)
    clips = [clip_frames] * batch
    pixels = encoder.processor(images=list(np.concatenate(clips)), return_tensors="pt")
    pixel_values = pixels["pixel_values"].to(device)

    def bare() -> None:
        with torch.inference_mode():
            encoder.model.get_image_features(pixel_values=pixel_values)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def ours() -> None:
        encoder.encode_many(clips, batch_size=batch * frames)

    return _row(
        "clip-vit-large-patch14", batch, *timed_pair(ours, bare, repeats), frames_per_clip=frames
    )


def _row(model: str, batch: int, ours_s: float, bare_s: float, **shape: Any) -> dict:
    return {
        "model": model,
        "batch_clips": batch,
        **shape,
        "ours_s_per_batch": round(ours_s, 4),
        "bare_s_per_batch": round(bare_s, 4),
        "ours_clips_per_s": round(batch / ours_s, 3),
        "bare_clips_per_s": round(batch / bare_s, 3),
        "bare_over_ours": round(bare_s / ours_s, 3),
    }


def synthetic_inputs(model: str, clips: int, audio_s: float, frames: int) -> list[Any]:
    """Per clip: a spoken-sentence waveform (HuBERT) or face frames (CLIP), all different."""
    from meragent.data.synth import face_frames, load_speech_samples, speech_track, tone_track

    samples = load_speech_samples() if model == "hubert" else []
    inputs: list[Any] = []
    for i in range(clips):
        if model == "hubert":
            audio = (
                speech_track(samples[i % len(samples)], audio_s, seed=i)
                if samples
                else tone_track(audio_s, seed=i)
            )
            inputs.append((audio.astype(np.float32), 16000))
        else:
            inputs.append(np.stack(list(face_frames(frames, seed=i))))
    return inputs


def compare(model: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Batch 1 vs N and fp32 vs bf16, same run, same inputs; cosine of bf16 vs fp32 vectors."""
    from dataclasses import replace

    from meragent.tools.encoding import encode_payloads

    modality = "acoustic" if model == "hubert" else "visual"
    if model == "hubert":
        from meragent.tools.acoustic_encoder import load_acoustic_encoder

        fp32: Any = load_acoustic_encoder(str(folder), device=args.device)
    else:
        from meragent.tools.clip_encoder import load_clip_encoder

        fp32 = load_clip_encoder(str(folder), device=args.device)
    encoders = {"fp32": fp32, "bf16": replace(fp32, precision="bf16")}  # same weights
    inputs = synthetic_inputs(model, args.clips, args.audio_s, args.frames)

    def run(precision: str, batch: int) -> list[np.ndarray]:
        vectors: list[np.ndarray] = []
        for start in range(0, len(inputs), batch):
            group = inputs[start : start + batch]
            vectors.extend(encode_payloads(modality, encoders[precision], group))
        return vectors

    configs = [(p, b) for p in ("fp32", "bf16") for b in sorted({1, args.encoder_batch})]
    for precision, _ in configs:  # warm-up: one clip each
        encode_payloads(modality, encoders[precision], inputs[:1])
    times: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    vectors: dict[str, list[np.ndarray]] = {}
    load_before = os.getloadavg()[0]
    for round_ in range(args.repeats):
        # Every other round in reverse order, so a load that drifts during the run (a shared
        # machine) favours no configuration.
        for precision, batch in configs if round_ % 2 == 0 else configs[::-1]:
            start = time.perf_counter()
            vectors[precision] = run(precision, batch)
            times[(precision, batch)].append(time.perf_counter() - start)
    rates = {
        f"{p}_batch{b}": round(len(inputs) / float(np.median(t)), 4) for (p, b), t in times.items()
    }
    cosines = [
        float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
        for a, b in zip(vectors["fp32"], vectors["bf16"], strict=True)
    ]
    big = args.encoder_batch
    return {
        "model": "hubert-large" if model == "hubert" else "clip-vit-large-patch14",
        "clips": len(inputs),
        **({"audio_s": args.audio_s} if model == "hubert" else {"frames_per_clip": args.frames}),
        "repeats": args.repeats,
        "clips_per_s": rates,
        f"batch{big}_over_batch1_fp32": round(rates[f"fp32_batch{big}"] / rates["fp32_batch1"], 3),
        f"bf16_over_fp32_batch{big}": round(
            rates[f"bf16_batch{big}"] / rates[f"fp32_batch{big}"], 3
        ),
        "bf16_over_fp32_batch1": round(rates["bf16_batch1"] / rates["fp32_batch1"], 3),
        "cosine_bf16_vs_fp32": {
            "min": round(min(cosines), 5),
            "mean": round(float(np.mean(cosines)), 5),
        },
        "load_average_1m": {"before": round(load_before, 2), "after": os.getloadavg()[0]},
    }


def main_compare(args: argparse.Namespace) -> None:
    import torch

    from meragent.config import cpu_has_bf16

    out = RESULTS / f"encoders_{args.device}.json"
    result = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            folder = Path(tmp) / name
            (build_hubert_large if name == "hubert" else build_clip_large)(folder)
            row = compare(name, folder, args)
            row["uptime"] = os.popen("uptime").read().strip()
            print(json.dumps(row), flush=True)
            result[f"compare_{name}"] = {
                **row,
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
                "cpu_has_bf16": cpu_has_bf16(),
                "platform": platform.platform(),
                "note": "random weights at real architecture size; tools' encode path; "
                "configurations timed alternately, median of repeats after a warm-up",
            }
            RESULTS.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["overhead", "compare"], default="overhead")
    parser.add_argument("--clips", type=int, default=8, help="compare: synthetic clips")
    parser.add_argument("--encoder-batch", type=int, default=8, help="compare: batch N vs 1")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--audio-s", type=float, default=5.0, help="seconds of audio per clip")
    parser.add_argument("--frames", type=int, default=8, help="face frames per clip")
    parser.add_argument("--models", nargs="+", default=["hubert", "clip"])
    args = parser.parse_args()
    if args.mode == "compare":
        main_compare(args)
        return

    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            folder = Path(tmp) / name
            (build_hubert_large if name == "hubert" else build_clip_large)(folder)
            for batch in args.batch_sizes:
                repeats = args.repeats if batch == 1 else max(1, args.repeats // 2)
                if name == "hubert":
                    row = bench_hubert(folder, args.device, batch, args.audio_s, repeats)
                else:
                    row = bench_clip(folder, args.device, batch, args.frames, repeats)
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {
        "device": args.device,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "platform": platform.platform(),
        "repeats": args.repeats,
        "note": "random weights at real architecture size; median of repeats after a warm-up",
        "results": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"encoders_{args.device}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
