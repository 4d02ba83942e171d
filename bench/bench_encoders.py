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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--audio-s", type=float, default=5.0, help="seconds of audio per clip")
    parser.add_argument("--frames", type=int, default=8, help="face frames per clip")
    parser.add_argument("--models", nargs="+", default=["hubert", "clip"])
    args = parser.parse_args()

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
