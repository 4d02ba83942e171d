"""``--modality video``: LoRA on the language model of a vision-language model, clip -> labels.

The model sees sampled frames of the clip (decoded once by ``meragent.data.media``, resized by
``qwen_vl_utils``) plus the subtitle, and answers with the same label-list format as the text
labeler. LoRA goes on the attention/MLP projections of ``language_model`` only: the vision
tower reuses the MLP names and stays frozen. Targets are the 332 names' labels from
``--data`` (``openset_labels.csv``) when present, else the manifest's ``openset`` column. Audio
is not fed: Qwen2.5-VL has no audio input (Qwen2-Audio would need a second tower).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meragent.agents.labeler import format_labels
from meragent.errors import DataError, MeragentError, ModelLoadError
from meragent.finetune.lora_config import LoraRunConfig, Reporter
from meragent.finetune.lora_fold import limit_dataset
from meragent.finetune.ov_data import (
    LABELS_FILE,
    OVDataset,
    OVSample,
    kfold_split,
    load_ov_labels,
)
from meragent.finetune.ov_eval import SystemPrediction

#: Our wording, same request as the text labeler's prompt, for a clip instead of a description.
VIDEO_LABELER_SYSTEM_PROMPT = (
    "You are a specialist in reading human emotion. You will see frames of a video of a person "
    "and read what they say. Name the emotional states of the main person that the clip "
    "clearly shows. Answer with a single list of short emotion words, separated by commas, for "
    "example ['happy', 'relieved']. Leave out anything that is only a guess. If no emotional "
    "state is clearly shown, answer []."
)
VIDEO_LANGUAGE_KEY = "video"
_LANGUAGE_MODEL = "language_model"


class VideoSample(OVSample):
    """A clip with its subtitle (kept in ``description``) and open-vocabulary labels."""

    video: Path


@dataclass
class LoadedVLM:
    """A vision-language model with its processor (tokenizer + image/video processors)."""

    model: Any
    processor: Any
    model_id: str
    precision: str = "fp32"


def load_video_lm(
    model: str,
    *,
    adapter: str | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    precision: str = "fp32",
) -> LoadedVLM:
    """Load a Qwen2.5-VL-style model + processor (HF id or folder), optionally with an adapter."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from meragent.config import resolve_device, resolve_precision
    from meragent.tools.causal_lm import check_adapter_base, resolve_dtype

    if adapter is not None:
        check_adapter_base(adapter, model)
    device = resolve_device(device)
    try:
        processor = AutoProcessor.from_pretrained(model)
        lm: Any = AutoModelForImageTextToText.from_pretrained(
            model, dtype=resolve_dtype(dtype, device)
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError("video labeler", model, str(exc).strip().splitlines()[0]) from exc
    lm = lm.to(device)
    if adapter is not None:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, adapter)
    return LoadedVLM(
        model=lm.eval(),
        processor=processor,
        model_id=model,
        precision=resolve_precision(precision, device),
    )


def load_video_samples(config: LoraRunConfig) -> OVDataset:
    """Clips of the manifest with labels; rows without labels or video are skipped, counted."""
    from meragent.data.manifest import load_manifest

    assert config.manifest is not None
    manifest = load_manifest(config.manifest)
    skipped: dict[str, list[str]] = {}
    for error in manifest.errors:
        skipped.setdefault("manifest_row_error", []).append(error.clip_id or str(error.row))
    labels: dict[str, list[str]] = {}
    if (config.data_dir / LABELS_FILE).is_file():
        labels, unreadable = load_ov_labels(config.data_dir)
        for reason, names in unreadable.items():
            skipped.setdefault(reason, []).extend(names)
    samples = []
    for clip in manifest.clips:
        target = labels.get(clip.id, clip.openset)
        if target is None:
            skipped.setdefault("no_labels_row", []).append(clip.id)
        elif clip.video is None:
            skipped.setdefault("no_video", []).append(clip.id)
        else:
            samples.append(
                VideoSample(
                    name=clip.id,
                    language=VIDEO_LANGUAGE_KEY,
                    description=clip.subtitle or "",
                    labels=target,
                    video=clip.video,
                )
            )
    if not samples:
        raise DataError(f"{config.manifest}: no clip has both a video and labels")
    return OVDataset(samples=samples, skipped=skipped)


def video_messages(
    frames: list[Any], subtitle: str, *, max_pixels: int, min_pixels: int
) -> list[dict[str, Any]]:
    """System + user turn: the frames as one video part, then the subtitle and the cue."""
    text = f"Subtitle: {subtitle.strip() or '(none)'}\n\nEmotion list:"
    return [
        {"role": "system", "content": [{"type": "text", "text": VIDEO_LABELER_SYSTEM_PROMPT}]},
        {
            "role": "user",
            "content": [
                {
                    "type": "video",
                    "video": frames,
                    "max_pixels": max_pixels,
                    "min_pixels": min_pixels,
                },
                {"type": "text", "text": text},
            ],
        },
    ]


@dataclass
class VideoExample:
    """A decoded clip ready for the model: prompt inputs (with the video) and the target."""

    name: str
    prompt_inputs: dict[str, Any]
    answer_ids: list[int]


def _clip_frames(sample: VideoSample, num_frames: int) -> list[Any]:
    from PIL import Image

    from meragent.data.media import decode_media

    media = decode_media(sample.video, clip_id=sample.name, num_frames=num_frames)
    if media.frames is None or len(media.frames) == 0:
        raise DataError(f"clip {sample.name!r}: no video frames in {sample.video}")
    return [Image.fromarray(frame) for frame in media.frames]


def encode_video_example(
    vlm: LoadedVLM, sample: VideoSample, frames: list[Any], pixels: tuple[int, int]
) -> VideoExample:
    """Run the processor on the prompt (video tokens expanded) and tokenise the answer."""
    from qwen_vl_utils import process_vision_info

    processor = vlm.processor
    messages = video_messages(
        frames, sample.description, max_pixels=pixels[0], min_pixels=pixels[1]
    )
    _, videos = process_vision_info(messages)
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    answer_turn = {
        "role": "assistant",
        "content": [{"type": "text", "text": format_labels(sample.labels)}],
    }
    full = processor.apply_chat_template(
        [*messages, answer_turn], tokenize=False, add_generation_prompt=False
    )
    if not full.startswith(prompt):
        raise DataError("the processor's chat template cannot separate prompt and answer")
    inputs = processor(text=[prompt], videos=videos, return_tensors="pt")
    answer = processor.tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    return VideoExample(name=sample.name, prompt_inputs=dict(inputs), answer_ids=list(answer))


def video_training_inputs(batch: list[VideoExample]) -> dict[str, Any]:
    """One example per step: prompt + answer ids, labels -100 on the prompt (and video) part."""
    import torch

    if len(batch) != 1:
        raise DataError("video LoRA trains one clip per micro-batch (use --grad-accum)")
    example = batch[0]
    inputs = dict(example.prompt_inputs)
    prompt_ids = inputs["input_ids"]
    answer = torch.tensor([example.answer_ids], dtype=prompt_ids.dtype)
    inputs["input_ids"] = torch.cat([prompt_ids, answer], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["labels"] = torch.cat([torch.full_like(prompt_ids, -100), answer], dim=1)
    return inputs


def generate_video_labels(
    vlm: LoadedVLM, example: VideoExample, *, max_new_tokens: int
) -> SystemPrediction:
    """Greedy answer for one clip with the labeler's list decoding, parsed by its parser."""
    import torch

    from meragent.config import autocast
    from meragent.finetune.ov_eval import parse_generation
    from meragent.tools.causal_lm_decoding import LIST_DECODING, stopping_criteria

    device = next(vlm.model.parameters()).device
    inputs = {key: value.to(device) for key, value in example.prompt_inputs.items()}
    tokenizer = vlm.processor.tokenizer
    width = inputs["input_ids"].shape[1]
    with torch.no_grad(), autocast(device.type, vlm.precision):
        output = vlm.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            stopping_criteria=stopping_criteria(tokenizer, width, LIST_DECODING),
        )
    new_tokens = output[0, width:].tolist()
    ended = bool(new_tokens) and new_tokens[-1] == tokenizer.eos_token_id
    text = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    return parse_generation(text, hit_cap=not ended and len(new_tokens) >= max_new_tokens)


#: (max_pixels, min_pixels) per frame given to qwen_vl_utils; small frames keep CPU runs short.
DEFAULT_PIXELS = (224 * 224, 56 * 56)


def _encode_all(
    vlm: LoadedVLM, dataset: OVDataset, config: LoraRunConfig, report: Reporter
) -> dict[str, VideoExample]:
    """Decode and encode every clip once; a clip that fails is skipped and counted."""
    encoded: dict[str, VideoExample] = {}
    for sample in dataset.samples:
        assert isinstance(sample, VideoSample)
        try:
            frames = _clip_frames(sample, config.num_frames)
            encoded[sample.name] = encode_video_example(vlm, sample, frames, DEFAULT_PIXELS)
        except MeragentError as exc:
            dataset.skipped.setdefault("media_error", []).append(sample.name)
            report(f"skipped clip {sample.name!r}: {exc}")
    return encoded


class VideoStrategy:
    """Frames + subtitle -> labels with a vision-language model; LoRA on its language model."""

    task = "MER-OV video labeler LoRA (frames + subtitle -> labels)"
    reads = "video frames + subtitle"

    def __init__(
        self,
        config: LoraRunConfig,
        base: LoadedVLM,
        dataset: OVDataset,
        encoded: dict[str, VideoExample],
    ) -> None:
        self.config = config
        self.base = base
        self.dataset = dataset
        self.encoded = encoded
        self.preprocessor = base.processor
        self.precision = base.precision
        # One clip per micro-batch: clips differ in video-token count.
        self.hyper = config.hyper.model_copy(update={"batch_size": 1})
        self.data_source = str(config.manifest)
        self.extra: dict[str, Any] = {}

    @classmethod
    def load(cls, config: LoraRunConfig, report: Reporter) -> VideoStrategy:
        """Load the clips and the model; decode and encode every clip once (failures skipped)."""
        dataset = limit_dataset(load_video_samples(config), config.limit, config.seed)
        # A bad fold count fails before the slow load.
        kfold_split(dataset.names, config.folds, config.seed)
        base = load_video_lm(
            config.base, device=config.device, dtype=config.dtype, precision=config.precision
        )
        encoded = _encode_all(base, dataset, config, report)
        kept = OVDataset(
            samples=[s for s in dataset.samples if s.name in encoded], skipped=dataset.skipped
        )
        return cls(config, base, kept, encoded)

    def training_examples(self, train: list[OVSample], fold: int) -> list[Any]:
        return [self.encoded[s.name] for s in train]

    def train_options(self) -> dict[str, Any]:
        return {"collate_fn": video_training_inputs}

    def fresh_lora(self) -> Any:
        from meragent.finetune.lora_train import add_lora

        return add_lora(copy.deepcopy(self.base.model), self.hyper, only_under=_LANGUAGE_MODEL)

    def merged(self, peft_model: Any) -> LoadedVLM:
        return LoadedVLM(
            model=peft_model.merge_and_unload().eval(),
            processor=self.base.processor,
            model_id=f"{self.config.base}+lora",
            precision=self.precision,
        )

    def predict(self, model: Any, test: list[OVSample], label: str) -> list[SystemPrediction]:
        budget = self.config.max_new_tokens
        return [
            generate_video_labels(model, self.encoded[s.name], max_new_tokens=budget) for s in test
        ]
