"""Audio-LLM and video-LLM describers: free-text emotion descriptions of a clip.

Two backends per modality:

* in-process transformers: ``Qwen2AudioForConditionalGeneration`` (audio cut to 30 s, its
  encoder's window) and ``Qwen2_5_VLForConditionalGeneration`` fed our already-decoded frames as
  a video through ``qwen_vl_utils.process_vision_info``;
* any OpenAI-compatible server (vLLM, ...) through ``langchain-openai``: audio as an
  ``input_audio`` part (base64 WAV), frames as ``image_url`` parts (JPEG data URIs).

Both implement ``tools.base.Describer``; a clip without the modality gets ``Clue.unavailable``.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from meragent.data.media_types import DecodedMedia
from meragent.errors import LLMError
from meragent.schema import Clip, Clue, Modality
from meragent.tools.lazy import Lazy
from meragent.tools.model_source import first_line, load_pretrained, resolve_model_source
from meragent.tools.prompts import audio_prompt, video_prompt

AUDIO_ROLE = "audio_llm"
VIDEO_ROLE = "video_llm"
#: Qwen2-Audio's Whisper-style encoder sees at most 30 s.
MAX_AUDIO_S = 30.0
AUDIO_TRUNCATED = "audio_truncated"
#: Pixels per frame for the video LLM (Qwen's examples use 360 × 420); bounds the token count.
DEFAULT_MAX_PIXELS = 360 * 420
#: qwen_vl_utils' default lower bound per video frame (128 merged 28 × 28 patches).
VIDEO_MIN_PIXELS = 128 * 28 * 28
MIN_FRAME_PIXELS = 112 * 112


def cut_audio(audio: np.ndarray, sample_rate: int, max_s: float) -> tuple[np.ndarray, bool]:
    limit = int(max_s * sample_rate)
    return (audio[:limit], True) if len(audio) > limit else (audio, False)


def wav_base64(audio: np.ndarray, sample_rate: int) -> str:
    """16-bit PCM WAV of a float waveform, base64-encoded (what ``input_audio`` expects)."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def jpeg_data_uri(frame: np.ndarray, max_side: int = 448, quality: int = 85) -> str:
    """An RGB uint8 frame as a ``data:image/jpeg;base64,...`` URI, longest side ≤ ``max_side``."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame))
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def effective_fps(media: DecodedMedia) -> float:
    """Sampling rate of the decoded frames (frames per second of clip)."""
    n = len(media.frames) if media.frames is not None else 0
    if n > 1 and media.frame_times is not None and len(media.frame_times) == n:
        span = float(media.frame_times[-1] - media.frame_times[0])
        if span > 0:
            return (n - 1) / span
    return n / media.duration if media.duration > 0 else 1.0


def _generate(model: Any, processor: Any, inputs: Any, max_new_tokens: int) -> str:
    import torch

    # Floating inputs (mel features, pixels) must match a half-precision model's dtype.
    inputs = inputs.to(model.device, model.dtype)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return str(processor.batch_decode(new_tokens, skip_special_tokens=True)[0]).strip()


@dataclass
class LocalAudioLLM:
    """Qwen2-Audio (or a model with the same interface) and its processor."""

    model: Any
    processor: Any
    model_id: str

    def generate(
        self, audio: np.ndarray, sample_rate: int, prompt: str, max_new_tokens: int
    ) -> str:
        conversation = [
            {
                "role": "user",
                "content": [
                    {"type": "audio", "audio_url": "clip.wav"},
                    {"type": "text", "text": prompt},
                ],
            }
        ]
        text = self.processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
        target_rate = int(self.processor.feature_extractor.sampling_rate)
        if sample_rate != target_rate:
            import librosa

            audio = librosa.resample(audio, orig_sr=sample_rate, target_sr=target_rate)
        inputs = self.processor(
            text=text, audio=[audio], sampling_rate=target_rate, return_tensors="pt", padding=True
        )
        return _generate(self.model, self.processor, inputs, max_new_tokens)


@dataclass
class LocalVideoLLM:
    """Qwen2.5-VL (or a model with the same interface) and its processor."""

    model: Any
    processor: Any
    model_id: str
    max_pixels: int = DEFAULT_MAX_PIXELS

    def messages(self, frames: np.ndarray, fps: float, prompt: str) -> list[dict[str, Any]]:
        from PIL import Image

        images = [Image.fromarray(np.ascontiguousarray(frame)) for frame in frames]
        # qwen_vl_utils resizes frame lists to multiples of 56 px first: a budget under two
        # such cells per side would round a frame down to zero pixels.
        max_pixels = max(self.max_pixels, MIN_FRAME_PIXELS)
        video = {
            "type": "video",
            "video": images,
            "sample_fps": fps,
            "max_pixels": max_pixels,
            # qwen_vl_utils' floor (128 tokens per frame) would exceed a small max_pixels.
            "min_pixels": min(max_pixels, VIDEO_MIN_PIXELS),
        }
        return [{"role": "user", "content": [video, {"type": "text", "text": prompt}]}]

    def generate(self, frames: np.ndarray, fps: float, prompt: str, max_new_tokens: int) -> str:
        from qwen_vl_utils import process_vision_info

        messages = self.messages(frames, fps, prompt)
        text = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        images, videos, video_kwargs = process_vision_info(messages, return_video_kwargs=True)
        inputs = self.processor(
            text=[text],
            images=images,
            videos=videos,
            padding=True,
            return_tensors="pt",
            **video_kwargs,
        )
        return _generate(self.model, self.processor, inputs, max_new_tokens)


def load_audio_llm(
    model_id_or_path: str, *, device: str = "cpu", dtype: str = "auto"
) -> LocalAudioLLM:
    """Load Qwen2-Audio-Instruct (hub id or local folder) with its processor."""
    source = resolve_model_source(AUDIO_ROLE, model_id_or_path)
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    processor, model = load_pretrained(
        AUDIO_ROLE,
        source,
        AutoProcessor,
        Qwen2AudioForConditionalGeneration,
        dtype=dtype,
        device=device,
    )
    return LocalAudioLLM(model=model, processor=processor, model_id=str(model_id_or_path))


def load_video_llm(
    model_id_or_path: str,
    *,
    device: str = "cpu",
    dtype: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LocalVideoLLM:
    """Load Qwen2.5-VL-Instruct (hub id or local folder) with its processor."""
    source = resolve_model_source(VIDEO_ROLE, model_id_or_path)
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor, model = load_pretrained(
        VIDEO_ROLE,
        source,
        AutoProcessor,
        Qwen2_5_VLForConditionalGeneration,
        dtype=dtype,
        device=device,
    )
    return LocalVideoLLM(
        model=model, processor=processor, model_id=str(model_id_or_path), max_pixels=max_pixels
    )


def _described(
    modality: Modality, source: str, model_id: str, text: str, prompt: str, **data: Any
) -> Clue:
    if not text:
        return Clue(
            modality=modality,
            source=source,
            available=False,
            model_id=model_id,
            error="the model returned an empty description",
            data={"prompt": prompt, **data},
        )
    flags = [AUDIO_TRUNCATED] if data.get("truncated") else []
    return Clue(
        modality=modality,
        source=source,
        text=text,
        model_id=model_id,
        data={"prompt": prompt, **data},
        flags=flags,
    )


def describe_audio(
    name: str,
    model_id: str,
    media: DecodedMedia,
    subtitle: str,
    max_audio_s: float,
    generate: Callable[[np.ndarray, str], str],
) -> Clue:
    """The audio clue: ``generate(audio, prompt)`` on the clip's audio (cut to ``max_audio_s``)."""
    if not media.has_audio or media.audio is None:
        return Clue.unavailable(Modality.ACOUSTIC, name, "clip has no audio track")
    audio, truncated = cut_audio(media.audio, media.sample_rate, max_audio_s)
    prompt = audio_prompt(subtitle)
    text = generate(audio, prompt)
    return _described(
        Modality.ACOUSTIC,
        name,
        model_id,
        text,
        prompt,
        audio_s=round(len(audio) / media.sample_rate, 3),
        truncated=truncated,
    )


def describe_video(
    name: str,
    model_id: str,
    media: DecodedMedia,
    subtitle: str,
    generate: Callable[[np.ndarray, str], str],
) -> Clue:
    """The video clue: ``generate(frames, prompt)`` on the clip's sampled frames."""
    if not media.has_video or media.frames is None:
        return Clue.unavailable(Modality.VISUAL, name, "clip has no video frames")
    prompt = video_prompt(subtitle)
    text = generate(media.frames, prompt)
    return _described(Modality.VISUAL, name, model_id, text, prompt, n_frames=len(media.frames))


@dataclass
class LocalAudioDescriber:
    """Audio describer running an in-process audio LLM (loaded on first use)."""

    llm: Lazy[LocalAudioLLM]
    model_id: str
    max_new_tokens: int = 256
    name: str = AUDIO_ROLE

    def describe(self, clip: Clip, media: DecodedMedia, subtitle: str) -> Clue:
        def generate(audio: np.ndarray, prompt: str) -> str:
            return self.llm.get().generate(audio, media.sample_rate, prompt, self.max_new_tokens)

        return describe_audio(self.name, self.model_id, media, subtitle, MAX_AUDIO_S, generate)


@dataclass
class LocalVideoDescriber:
    """Video describer running an in-process video LLM (loaded on first use)."""

    llm: Lazy[LocalVideoLLM]
    model_id: str
    max_new_tokens: int = 256
    name: str = VIDEO_ROLE

    def describe(self, clip: Clip, media: DecodedMedia, subtitle: str) -> Clue:
        def generate(frames: np.ndarray, prompt: str) -> str:
            fps = effective_fps(media)
            return self.llm.get().generate(frames, fps, prompt, self.max_new_tokens)

        return describe_video(self.name, self.model_id, media, subtitle, generate)


def audio_message_content(prompt: str, audio: np.ndarray, sample_rate: int) -> list[dict[str, Any]]:
    """OpenAI chat content: the instruction and the clip's audio as a base64 WAV part."""
    return [
        {"type": "text", "text": prompt},
        {
            "type": "input_audio",
            "input_audio": {"data": wav_base64(audio, sample_rate), "format": "wav"},
        },
    ]


def video_message_content(prompt: str, frames: np.ndarray, max_side: int) -> list[dict[str, Any]]:
    """OpenAI chat content: the frames in time order as image parts, then the instruction."""
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": jpeg_data_uri(frame, max_side)}}
        for frame in frames
    ]
    parts.append({"type": "text", "text": prompt})
    return parts


@dataclass
class OpenAIDescriber:
    """Describer that sends the clip to an OpenAI-compatible server through a LangChain model."""

    kind: Literal["audio", "video"]
    chat_model: Any
    model_id: str
    max_audio_s: float = MAX_AUDIO_S
    frame_max_side: int = 448
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not self.name:
            self.name = AUDIO_ROLE if self.kind == "audio" else VIDEO_ROLE

    def describe(self, clip: Clip, media: DecodedMedia, subtitle: str) -> Clue:
        if self.kind == "audio":
            return self._describe_audio(media, subtitle)
        return self._describe_video(media, subtitle)

    def _describe_audio(self, media: DecodedMedia, subtitle: str) -> Clue:
        def generate(audio: np.ndarray, prompt: str) -> str:
            return self._ask(audio_message_content(prompt, audio, media.sample_rate))

        return describe_audio(self.name, self.model_id, media, subtitle, self.max_audio_s, generate)

    def _describe_video(self, media: DecodedMedia, subtitle: str) -> Clue:
        def generate(frames: np.ndarray, prompt: str) -> str:
            return self._ask(video_message_content(prompt, frames, self.frame_max_side))

        return describe_video(self.name, self.model_id, media, subtitle, generate)

    def _ask(self, content: list[dict[str, Any]]) -> str:
        from langchain_core.messages import HumanMessage

        try:
            reply = self.chat_model.invoke([HumanMessage(content=content)])  # type: ignore[arg-type]
        except Exception as exc:  # the retry policy is spent: report one line
            raise LLMError(f"{self.name} ({self.model_id}) call failed: {first_line(exc)}") from exc
        return str(getattr(reply, "text", None) or reply.content).strip()


def make_openai_chat(
    model: str,
    *,
    base_url: str | None,
    api_key: str | None,
    timeout_s: float,
    max_retries: int,
    max_tokens: int,
) -> Any:
    """A ``ChatOpenAI`` for an OpenAI-compatible server (vLLM needs any non-empty key), under
    the chat roles' retry policy (``llm_policy.CallPolicy``); the client bounds each attempt."""
    from langchain_openai import ChatOpenAI

    from meragent.llm_policy import CallPolicy

    client = ChatOpenAI(
        model=model,
        base_url=base_url,
        api_key=api_key or "EMPTY",
        timeout=timeout_s,
        max_retries=0,  # the policy retries; client retries on top would multiply attempts
        max_tokens=max_tokens,
        temperature=0.0,
    )
    return CallPolicy(max_retries=max_retries).retrying(client)
