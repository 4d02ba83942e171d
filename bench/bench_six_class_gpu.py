"""Clips/s of the six-class path on a GPU at the paper's model sizes, next to the bare encoders.

Random weights at the real sizes, configs built in code (no hub): HuBERT shaped like
TencentGameMate/chinese-hubert-large, CLIP shaped like openai/clip-vit-large-patch14 and a
1024-d BERT-large-shaped text encoder (chinese-roberta-wwm-ext-large's vocabulary size). The cost
of a forward pass does not depend on the weights' values, so the timings are those of the real
models.

Input per clip, as the Ray executor's encoder stage receives it: a 16 kHz waveform (length drawn
from ``--audio-s``), ``--frames`` face crops of 224 x 224 (face detection runs in the CPU decode
stage and is not timed here) and a Chinese subtitle (``--chars``). For each dtype and batch size:

* ``path``: the encoder stage's own calls (``tools.encoding.encode_payloads``: feature extraction,
  image processing and tokenisation on the host, the forward passes, pooling, copies back) and
  the attention-fusion head's forward (``FusionPredictor.predict_batch``) up to the six-class
  answer of every clip;
* ``bare``: only the three encoders' forward passes, each over the whole batch at once, on the
  very tensors the path's preprocessing produced (already on the device).

``ratio = path / bare`` in clips/s; the issue's goal is >= 0.8. Results go to
``bench/results/six_class_gpu.json`` with the device name. ``--tiny --device cpu`` runs the same
code at toy sizes to check that the script works end to end; such a run is written elsewhere
(default: the system temp folder) and can never be written as ``six_class_gpu.json``. The JSON
is rewritten after every (dtype, batch) row with ``finished: false`` until the end, so a run
stopped at a time cap keeps what it measured. ``bench/gpu_suite.py`` runs this as its first step.

Usage: ``python bench/bench_six_class_gpu.py [--dtypes fp16 bf16] [--batches 16 64 256]
[--repeats 3] [--out bench/results/six_class_gpu.json]``;
check: ``python bench/bench_six_class_gpu.py --tiny --device cpu``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meragent.schema import EMOTIONS
from meragent.tools.encoding import encode_payloads as encode_batch

GPU_RESULT = Path(__file__).resolve().parent / "results" / "six_class_gpu.json"
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
#: chinese-roberta-wwm-ext-large's vocabulary size (BERT-Chinese word pieces).
TEXT_VOCAB = 21128
SAMPLE_RATE = 16000
CROP = 224


# ----------------------------------------------------------------------------- models


def hubert_config(tiny: bool) -> Any:
    """chinese-hubert-large's architecture (or a toy one)."""
    from transformers import HubertConfig

    if tiny:
        return HubertConfig(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
            conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
            feat_extract_norm="layer", do_stable_layer_norm=True,
        )  # fmt: skip
    return HubertConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        hidden_act="gelu", feat_extract_norm="layer", feat_extract_activation="gelu",
        conv_dim=(512,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_bias=True, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
        do_stable_layer_norm=True, layer_norm_eps=1e-5,
    )  # fmt: skip


def clip_config(tiny: bool) -> Any:
    """clip-vit-large-patch14's architecture (or a toy one)."""
    from transformers import CLIPConfig

    if tiny:
        return CLIPConfig(
            text_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "intermediate_size": 37, "max_position_embeddings": 16},
            vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32,
                           "num_hidden_layers": 2, "num_attention_heads": 2,
                           "intermediate_size": 37},
            projection_dim=16,
        )  # fmt: skip
    return CLIPConfig(
        text_config={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                     "intermediate_size": 3072, "max_position_embeddings": 77,
                     "vocab_size": 49408, "hidden_act": "quick_gelu"},
        vision_config={"image_size": 224, "patch_size": 14, "hidden_size": 1024,
                       "num_hidden_layers": 24, "num_attention_heads": 16,
                       "intermediate_size": 4096, "hidden_act": "quick_gelu"},
        projection_dim=768,
    )  # fmt: skip


def text_config(tiny: bool, vocab_size: int) -> Any:
    """A BERT-large-shaped encoder: 24 layers, 1024-d (or a toy one)."""
    from transformers import BertConfig

    if tiny:
        return BertConfig(
            vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=37, max_position_embeddings=128,
        )  # fmt: skip
    return BertConfig(
        vocab_size=vocab_size, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, max_position_embeddings=512,
    )  # fmt: skip


def cjk_characters(count: int) -> list[str]:
    return [chr(0x4E00 + i) for i in range(count)]


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ASCII_TOKENS = tuple(chr(c) for c in range(33, 127))


def han_count(vocab_size: int) -> int:
    return vocab_size - len(SPECIAL_TOKENS) - len(ASCII_TOKENS)


def build_tokenizer(folder: Path, vocab_size: int) -> Any:
    """A BERT-Chinese style word-piece tokenizer (one token per Han character)."""
    from transformers import BertTokenizerFast

    han = cjk_characters(han_count(vocab_size))
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join([*SPECIAL_TOKENS, *ASCII_TOKENS, *han]) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab_file=str(vocab))


@dataclass
class SixClassPath:
    """The encoders the encoder stage runs, and the attention-fusion head after them."""

    acoustic: Any
    visual: Any
    text: Any
    fusion: Any
    params: dict[str, int]
    #: How many Han characters the text vocabulary holds (subtitles are drawn from them).
    han_chars: int


def _count(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def random_fusion(dims: tuple[int, int, int], device: str) -> Any:
    """An attention-fusion predictor (5 folds, hidden 256) with random weights."""
    import torch

    from meragent.tools.fusion_model import (
        BranchConfig,
        FusionModelConfig,
        FusionPredictor,
        expected_shapes,
    )

    names = ("acoustic", "visual", "lexical")
    branches = [BranchConfig(name=n, encoders=[n], dim=d) for n, d in zip(names, dims, strict=True)]
    config = FusionModelConfig(
        model="attention",
        branches=branches,
        hidden=256, dropout=0.3, lr=1e-3, weight_decay=1e-5, batch_size=32, epochs=100,
        folds=5, seed=0, with_valence=True,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    params = {
        name: (torch.randn(shape, generator=generator) * 0.02).to(device)
        for name, shape in expected_shapes(config).items()
    }
    return FusionPredictor(config, params, device=device, model_id="fusion:random")


def build_path(tiny: bool, device: str, workdir: Path) -> SixClassPath:
    """Random-weight encoders wrapped in the project's own encoder classes (fp32 to start)."""
    import torch
    from transformers import (
        BertModel,
        CLIPImageProcessor,
        CLIPModel,
        HubertModel,
        Wav2Vec2FeatureExtractor,
    )

    from meragent.tools.acoustic_encoder import AcousticEncoder
    from meragent.tools.clip_encoder import ClipImageEncoder
    from meragent.tools.text_encoder import HFTextEncoder

    torch.manual_seed(0)
    vocab = 2000 if tiny else TEXT_VOCAB
    with torch.device(device):
        hubert = HubertModel(hubert_config(tiny)).eval()
        clip = CLIPModel(clip_config(tiny)).eval()
        bert = BertModel(text_config(tiny, vocab)).eval()
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, do_normalize=True, return_attention_mask=True
    )
    acoustic = AcousticEncoder(hubert, extractor, "random:chinese-hubert-large", device)
    processor = (
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        if tiny
        else CLIPImageProcessor()  # the defaults are clip-vit-large-patch14's (224, OpenAI stats)
    )
    visual = ClipImageEncoder(clip, processor, "random:clip-vit-large-patch14", device)
    text = HFTextEncoder(bert, build_tokenizer(workdir, vocab), "random:bert-large-1024", device)
    dims = (acoustic.dim, visual.dim, text.dim)
    return SixClassPath(
        acoustic=acoustic,
        visual=visual,
        text=text,
        fusion=random_fusion(dims, device),
        params={"acoustic": _count(hubert), "visual": _count(clip), "text": _count(bert)},
        han_chars=han_count(vocab),
    )


def set_dtype(path: SixClassPath, dtype_name: str) -> None:
    import torch

    dtype = getattr(torch, DTYPES[dtype_name])
    for encoder in (path.acoustic, path.visual, path.text):
        encoder.model.to(dtype)


# ----------------------------------------------------------------------------- inputs


@dataclass
class BenchClip:
    audio: np.ndarray
    crops: np.ndarray
    subtitle: str


def make_clips(n: int, args: argparse.Namespace, vocab_han: int, seed: int = 0) -> list[BenchClip]:
    rng = np.random.default_rng(seed)
    han = cjk_characters(vocab_han)
    clips = []
    for _ in range(n):
        seconds = rng.uniform(*args.audio_s)
        audio = (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 0.1).astype(np.float32)
        crops = rng.integers(0, 256, size=(args.frames, CROP, CROP, 3), dtype=np.uint8)
        length = int(rng.integers(args.chars[0], args.chars[1] + 1))
        subtitle = "".join(rng.choice(han, size=length)) + "。"
        clips.append(BenchClip(audio, crops, subtitle))
    return clips


# ----------------------------------------------------------------------------- timing


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(device: str, work: Callable[[], Any]) -> tuple[float, Any]:
    synchronize(device)
    start = time.perf_counter()
    result = work()
    synchronize(device)
    return time.perf_counter() - start, result


def run_path(
    path: SixClassPath, clips: list[BenchClip], device: str
) -> tuple[dict[str, float], list[str]]:
    """The six-class path over one batch: seconds per stage and the answers."""
    seconds: dict[str, float] = {}
    seconds["acoustic"], audio_vectors = timed(
        device,
        lambda: encode_batch("acoustic", path.acoustic, [(c.audio, SAMPLE_RATE) for c in clips]),
    )
    seconds["visual"], image_vectors = timed(
        device, lambda: encode_batch("visual", path.visual, [c.crops for c in clips])
    )
    seconds["text"], text_vectors = timed(
        device, lambda: encode_batch("lexical", path.text, [c.subtitle for c in clips])
    )
    branches = [np.stack(v) for v in (audio_vectors, image_vectors, text_vectors)]
    present = np.ones((len(clips), 3), dtype=bool)
    seconds["fusion"], prediction = timed(
        device, lambda: path.fusion.predict_batch(branches, present)
    )
    answers = [EMOTIONS[i] for i in np.argmax(prediction.probs, axis=1)]
    return seconds, answers


@dataclass
class BareInputs:
    """The tensors the path's preprocessing produced for one batch, already on the device."""

    audio: dict[str, Any]
    pixels: Any
    tokens: dict[str, Any]
    preprocess_s: dict[str, float]


def prepare_bare(path: SixClassPath, clips: list[BenchClip], device: str) -> BareInputs:
    """Run the encoders' own preprocessing (timed on its own) and move the results over."""
    from meragent.tools.acoustic_encoder import split_into_chunks

    acoustic, visual, text = path.acoustic, path.visual, path.text
    chunk = round(acoustic.chunk_s * acoustic.sample_rate)
    flat = [part for c in clips for part in split_into_chunks(c.audio, chunk)]
    spent: dict[str, float] = {}
    spent["acoustic"], features = timed(
        "cpu",
        lambda: acoustic.feature_extractor(
            flat, sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt",
            return_attention_mask=True,
        ),
    )  # fmt: skip
    images = [crop for c in clips for crop in c.crops]
    spent["visual"], pixels = timed(
        "cpu", lambda: visual.processor(images=images, return_tensors="pt")["pixel_values"]
    )
    spent["text"], tokens = timed(
        "cpu",
        lambda: text.tokenizer(
            [c.subtitle for c in clips], padding=True, truncation=True,
            max_length=text.max_length, return_tensors="pt",
        ),
    )  # fmt: skip
    audio = {
        "input_values": features["input_values"].to(device, acoustic.model.dtype),
        "attention_mask": features["attention_mask"].to(device),
    }
    return BareInputs(
        audio=audio,
        pixels=pixels.to(device, visual.model.dtype),
        tokens={k: v.to(device) for k, v in tokens.items()},
        preprocess_s=spent,
    )


def run_bare(path: SixClassPath, bare: BareInputs, device: str) -> dict[str, float]:
    """Only the forward passes, each over the whole batch."""
    import torch

    seconds = {}
    with torch.inference_mode():
        seconds["acoustic"], _ = timed(
            device, lambda: path.acoustic.model(**bare.audio, output_hidden_states=True)
        )
        seconds["visual"], _ = timed(
            device, lambda: path.visual.model.get_image_features(pixel_values=bare.pixels)
        )
        seconds["text"], _ = timed(
            device, lambda: path.text.model(**bare.tokens, output_hidden_states=True)
        )
    return seconds


def measure(
    path: SixClassPath, clips: list[BenchClip], device: str, repeats: int
) -> dict[str, Any]:
    """Median over ``repeats`` runs (after one warm-up) of the path and of the bare forwards."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run_path(path, clips, device)  # warm-up: kernels, allocator, lazy inits
    bare = prepare_bare(path, clips, device)
    run_bare(path, bare, device)
    path_runs, bare_runs = [], []
    answers: list[str] = []
    for _ in range(repeats):
        stage_s, answers = run_path(path, clips, device)
        path_runs.append(stage_s)
        bare_runs.append(run_bare(path, bare, device))

    def median(runs: list[dict[str, float]]) -> dict[str, float]:
        return {key: statistics.median(run[key] for run in runs) for key in runs[0]}

    path_total = statistics.median(sum(run.values()) for run in path_runs)
    bare_total = statistics.median(sum(run.values()) for run in bare_runs)
    n = len(clips)
    result = {
        "path_clips_per_s": n / path_total,
        "bare_clips_per_s": n / bare_total,
        "ratio": bare_total / path_total,
        "path_s": path_total,
        "bare_s": bare_total,
        "path_stage_s": median(path_runs),
        "bare_encoder_s": median(bare_runs),
        "host_preprocess_s": bare.preprocess_s,
        "answers": {e: answers.count(e) for e in EMOTIONS if answers.count(e)},
    }
    if device.startswith("cuda"):
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def is_out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=sorted(DTYPES),
        default=None,
        help="default: fp16 bf16 (GPU), fp32 bf16 (--tiny on CPU)",
    )
    parser.add_argument(
        "--batches",
        nargs="+",
        type=int,
        default=None,
        help="clips per batch; default 16 64 256 (4 8 with --tiny)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting")
    parser.add_argument(
        "--audio-s",
        nargs=2,
        type=float,
        default=(2.0, 8.0),
        help="clip length range in seconds (uniform)",
    )
    parser.add_argument("--frames", type=int, default=8, help="face crops per clip")
    parser.add_argument(
        "--chars", nargs=2, type=int, default=(8, 40), help="subtitle length range in characters"
    )
    parser.add_argument("--tiny", action="store_true", help="toy model sizes (a smoke check)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON path")
    args = parser.parse_args(argv)  # fmt: skip
    args.dtypes = args.dtypes or (["fp32", "bf16"] if args.tiny else ["fp16", "bf16"])
    args.batches = args.batches or ([4, 8] if args.tiny else [16, 64, 256])
    real_gpu_run = args.device.startswith("cuda") and not args.tiny
    if args.out is None:
        args.out = (
            GPU_RESULT if real_gpu_run else Path(tempfile.gettempdir()) / "six_class_gpu.tiny.json"
        )
    if not real_gpu_run and args.out.resolve() == GPU_RESULT.resolve():
        parser.error(
            "six_class_gpu.json holds real-size GPU results only: "
            "drop --tiny/--device cpu or choose another --out"
        )
    return args  # fmt: skip


def device_facts(device: str) -> dict[str, Any]:
    import torch
    import transformers

    facts: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit(
                "--device cuda but torch sees no GPU (use --tiny --device cpu to check the script)"
            )
        facts["device_name"] = torch.cuda.get_device_name()
        facts["cuda"] = torch.version.cuda
    else:
        facts["device_name"] = f"CPU ({platform.processor() or platform.machine()})"
        facts["cpu_threads"] = torch.get_num_threads()
    return facts  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    facts = device_facts(args.device)
    results: list[dict[str, Any]] = []
    report: dict[str, Any] = {**facts, "tiny": args.tiny, "finished": False, "results": results}
    with tempfile.TemporaryDirectory() as workdir:
        path = build_path(args.tiny, args.device, Path(workdir))
        report.update(describe_run(args, path))
        write_report(args.out, report)
        clips_all = make_clips(max(args.batches), args, path.han_chars)
        for dtype in args.dtypes:
            set_dtype(path, dtype)
            for batch in args.batches:
                row: dict[str, Any] = {"dtype": dtype, "batch": batch}
                try:
                    row.update(measure(path, clips_all[:batch], args.device, args.repeats))
                except (RuntimeError, ValueError) as exc:  # OOM or an op missing for a dtype
                    row["error"] = str(exc).splitlines()[0][:300]
                    row["oom"] = is_out_of_memory(exc)
                    if args.device.startswith("cuda"):
                        import torch

                        torch.cuda.empty_cache()
                results.append(row)
                # Written after every row: a run stopped at its time cap keeps what it measured.
                write_report(args.out, report)
                print(format_row(row), flush=True)
    report["finished"] = True
    write_report(args.out, report)
    print(f"device: {facts['device_name']}; wrote {args.out}")
    return report


def describe_run(args: argparse.Namespace, path: SixClassPath) -> dict[str, Any]:
    return {
        "models": {
            **model_descriptions(args.tiny),
            "parameters": path.params,
        },
        "inputs": {
            "audio_s": list(args.audio_s),
            "face_crops_per_clip": args.frames,
            "crop_px": CROP,
            "subtitle_chars": list(args.chars),
            "not_timed": "decoding and face detection (CPU decode stage of the Ray executor)",
        },
        "repeats": args.repeats,
    }


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    partial.write_text(json.dumps(report, indent=2), encoding="utf-8")
    partial.replace(out)


def model_descriptions(tiny: bool) -> dict[str, str]:
    described = {
        "acoustic": "HubertModel, chinese-hubert-large config, random weights, last 4 layers",
        "visual": "CLIPModel, clip-vit-large-patch14 config, random weights, image tower",
        "text": f"BertModel, BERT-large shape (1024-d, 24 layers, vocab {TEXT_VOCAB}), random",
        "fusion": "attention fusion, 3 branches, hidden 256, 5 folds, random weights",
    }
    if tiny:
        return {name: f"toy-size stand-in for: {text}" for name, text in described.items()}
    return described


def format_row(row: dict[str, Any]) -> str:
    if "error" in row:
        kind = "OOM" if row["oom"] else "error"
        return f"{row['dtype']:>5} batch {row['batch']:>4}: {kind}: {row['error']}"
    stages = ", ".join(f"{k} {v:.3f}s" for k, v in row["path_stage_s"].items())
    return (
        f"{row['dtype']:>5} batch {row['batch']:>4}: path {row['path_clips_per_s']:8.1f} clips/s, "
        f"bare {row['bare_clips_per_s']:8.1f} clips/s, ratio {row['ratio']:.2f}  [{stages}]"
    )  # fmt: skip


if __name__ == "__main__":
    main()
