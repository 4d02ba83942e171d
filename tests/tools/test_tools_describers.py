"""Audio/video LLM describers: tiny random Qwen2-Audio / Qwen2.5-VL, and an OpenAI-style server."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from meragent.data.media_types import DecodedMedia
from meragent.errors import LLMError, ModelLoadError
from meragent.schema import Clip, Modality
from meragent.tools.base import Describer
from meragent.tools.describers import (
    AUDIO_TRUNCATED,
    LocalAudioDescriber,
    LocalVideoDescriber,
    OpenAIDescriber,
    load_audio_llm,
    load_video_llm,
    make_openai_chat,
)
from meragent.tools.lazy import Lazy
from meragent.tools.prompts import NO_SUBTITLE, audio_prompt, video_prompt

SR = 16000


def media(seconds: float = 1.0, n_frames: int = 4, audio: bool = True) -> DecodedMedia:
    rng = np.random.default_rng(0)
    return DecodedMedia(
        clip_id="c",
        sample_rate=SR,
        duration=seconds,
        audio=(0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32) if audio else None,
        frames=(rng.random((n_frames, 56, 84, 3)) * 255).astype(np.uint8) if n_frames else None,
        frame_times=np.linspace(0.1, seconds - 0.1, n_frames) if n_frames else None,
    )


def test_prompts_insert_the_subtitle_and_ask_for_the_cues() -> None:
    audio = audio_prompt('She said "fine"  again')
    assert "She said 'fine' again" in audio
    assert all(word in audio for word in ("tone", "pitch", "tempo", "emotional state"))
    video = video_prompt("")
    assert NO_SUBTITLE in video
    assert all(word in video for word in ("face", "gestures", "posture", "setting", "emotional"))


def test_local_audio_describer_with_tiny_qwen2_audio(tiny_qwen2_audio: Path) -> None:
    llm = load_audio_llm(str(tiny_qwen2_audio), dtype="float32")
    describer = LocalAudioDescriber(Lazy(lambda: llm), "tiny-audio", max_new_tokens=6)
    assert isinstance(describer, Describer)
    clue = describer.describe(Clip(id="c"), media(31.0, n_frames=0), "I am fine")
    assert clue.modality is Modality.ACOUSTIC and clue.model_id == "tiny-audio"
    assert clue.data["audio_s"] == 30.0 and AUDIO_TRUNCATED in clue.flags
    assert "I am fine" in clue.data["prompt"]
    # Greedy decoding of a seeded random model: deterministic, non-empty gibberish.
    assert clue.available and clue.text
    missing = describer.describe(Clip(id="c"), media(audio=False), "x")
    assert not missing.available and "no audio" in (missing.error or "")


def test_local_video_describer_with_tiny_qwen25_vl(tiny_qwen25_vl: Path) -> None:
    llm = load_video_llm(str(tiny_qwen25_vl), dtype="float32", max_pixels=4 * 28 * 28)
    messages = llm.messages(media().frames, 2.0, "prompt")
    video_part = messages[0]["content"][0]
    assert video_part["type"] == "video" and len(video_part["video"]) == 4
    describer = LocalVideoDescriber(Lazy(lambda: llm), "tiny-vl", max_new_tokens=6)
    clue = describer.describe(Clip(id="c"), media(2.0), "hello")
    assert clue.modality is Modality.VISUAL and clue.data["n_frames"] == 4
    assert clue.available and clue.text and "hello" in clue.data["prompt"]
    assert not describer.describe(Clip(id="c"), media(n_frames=0), "x").available


def test_local_llm_bad_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="audio_llm"):
        load_audio_llm(str(tmp_path / "qwen2-audio"))
    with pytest.raises(ModelLoadError, match="video_llm"):
        load_video_llm(str(tmp_path / "qwen2.5-vl"))


class FakeOpenAI(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions with a fixed reply and records every request body."""

    requests: ClassVar[list[dict[str, Any]]] = []
    status = 200

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append(body)
        if FakeOpenAI.status != 200:
            self.send_response(FakeOpenAI.status)
            self.end_headers()
            return
        reply = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Tense voice. Worried."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_server() -> Iterator[str]:
    FakeOpenAI.requests = []
    FakeOpenAI.status = 200
    server = HTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def chat(url: str) -> Any:
    return make_openai_chat(
        "served-model", base_url=url, api_key=None, timeout_s=10, max_retries=0, max_tokens=64
    )


def test_openai_audio_describer_sends_wav_audio(fake_server: str) -> None:
    import soundfile as sf

    describer = OpenAIDescriber(kind="audio", chat_model=chat(fake_server), model_id="served")
    clue = describer.describe(Clip(id="c"), media(1.5, n_frames=0), "see you")
    assert clue.available and clue.text == "Tense voice. Worried." and clue.source == "audio_llm"
    (request,) = FakeOpenAI.requests
    assert request["model"] == "served-model"
    parts = request["messages"][0]["content"]
    assert parts[0]["type"] == "text" and "see you" in parts[0]["text"]
    assert parts[1]["type"] == "input_audio" and parts[1]["input_audio"]["format"] == "wav"
    audio, rate = sf.read(io.BytesIO(base64.b64decode(parts[1]["input_audio"]["data"])))
    assert rate == SR and len(audio) == int(1.5 * SR)


def test_openai_video_describer_sends_frames_as_images(fake_server: str) -> None:
    describer = OpenAIDescriber(kind="video", chat_model=chat(fake_server), model_id="served")
    clue = describer.describe(Clip(id="c"), media(2.0, n_frames=3), "")
    assert clue.available and clue.modality is Modality.VISUAL
    parts = FakeOpenAI.requests[0]["messages"][0]["content"]
    images = [p for p in parts if p["type"] == "image_url"]
    assert len(images) == 3
    assert all(p["image_url"]["url"].startswith("data:image/jpeg;base64,") for p in images)
    assert parts[-1]["type"] == "text" and NO_SUBTITLE in parts[-1]["text"]


def test_openai_server_error_is_one_llm_error(fake_server: str) -> None:
    FakeOpenAI.status = 500
    describer = OpenAIDescriber(kind="audio", chat_model=chat(fake_server), model_id="served")
    with pytest.raises(LLMError, match="audio_llm"):
        describer.describe(Clip(id="c"), media(0.5, n_frames=0), "x")
