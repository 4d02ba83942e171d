"""Face detection/cropping, the CLIP encoder (tiny random model) and fer's expression model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meragent.data.media_types import DecodedMedia
from meragent.errors import DataError, ModelLoadError
from meragent.schema import EMOTIONS, Clip, Modality
from meragent.tools.clip_encoder import load_clip_encoder
from meragent.tools.faces import NO_FACE, FaceBox, crop_face, crop_faces, load_face_detector
from meragent.tools.facial_expression import (
    FER_CLASSES,
    fer_model_path,
    fer_to_mer,
    load_fer_classifier,
    summarize_expressions,
)
from meragent.tools.feature_cache import FeatureCache
from meragent.tools.lazy import Lazy
from meragent.tools.modality_tools import VisualTool

ASTRONAUT_FACE = (177, 66, 95, 95)  # where Haar finds the face in skimage's astronaut


def astronaut() -> np.ndarray:
    from skimage import data

    return np.asarray(data.astronaut())


def grey_frames(n: int, size: int = 96) -> np.ndarray:
    return np.full((n, size, size + 32, 3), 128, dtype=np.uint8)


def test_haar_finds_the_astronaut_face() -> None:
    boxes = load_face_detector().detect(astronaut())
    assert len(boxes) == 1
    box = boxes[0]
    x, y, w, _ = ASTRONAUT_FACE
    assert abs(box.x - x) < 15 and abs(box.y - y) < 15 and abs(box.w - w) < 20


def test_crop_faces_keeps_face_frames_and_flags_clips_without_faces() -> None:
    detector = load_face_detector()
    photo = astronaut()
    frames = np.stack([photo, np.full_like(photo, 90)])
    faces = crop_faces(frames, detector)
    assert faces.found_faces and faces.frame_indices == [0]
    assert faces.crops.shape == (1, 224, 224, 3) and faces.crops.dtype == np.uint8
    none = crop_faces(grey_frames(3), detector)
    assert none.flags == [NO_FACE] and none.frame_indices == [0, 1, 2]
    assert none.crops.shape == (3, 224, 224, 3)
    assert none.boxes == [None, None, None]


def test_crop_face_levels_tilted_eyes() -> None:
    import cv2

    frame = np.zeros((300, 300, 3), dtype=np.uint8)
    right_eye, angle = np.array([120.0, 130.0]), np.radians(30)
    left_eye = right_eye + 60 * np.array([np.cos(angle), np.sin(angle)])
    for x, y in (right_eye, left_eye):
        cv2.circle(frame, (round(x), round(y)), 5, (255, 255, 255), -1)
    box = FaceBox(
        100, 100, 120, 120, eyes=((right_eye[0], right_eye[1]), (left_eye[0], left_eye[1]))
    )
    crop = crop_face(frame, box, size=224)
    ys, xs = np.nonzero(crop[..., 0] > 128)
    left_half = xs < xs.mean()
    assert abs(ys[left_half].mean() - ys[~left_half].mean()) < 2.0
    assert crop.shape == (224, 224, 3)


def test_yunet_path_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="face_detector"):
        load_face_detector(tmp_path / "yunet.onnx")


def test_clip_features_are_projected_image_features_averaged(tiny_clip: Path) -> None:
    import torch

    encoder = load_clip_encoder(str(tiny_clip))
    frames = (np.random.default_rng(0).random((3, 40, 40, 3)) * 255).astype(np.uint8)
    per_frame = encoder.encode_frames(frames)
    assert per_frame.shape == (3, 16) and per_frame.dtype == np.float32
    pixels = encoder.processor(images=list(frames), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        reference = encoder.model.get_image_features(pixel_values=pixels).numpy()
    assert np.allclose(per_frame, reference, atol=1e-5)
    assert np.allclose(encoder.encode_clip(frames), reference.mean(axis=0), atol=1e-5)
    many = encoder.encode_many([frames[:1], frames[1:]])
    assert np.allclose(many[1], reference[1:].mean(axis=0), atol=1e-5)
    with pytest.raises(DataError, match="RGB"):
        encoder.encode_frames(frames[..., 0])


def test_clip_features_from_a_transformers_5_output_object(
    tiny_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers 5 wraps get_image_features' projection in BaseModelOutputWithPooling."""
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    encoder = load_clip_encoder(str(tiny_clip))
    frames = (np.random.default_rng(1).random((2, 40, 40, 3)) * 255).astype(np.uint8)
    pixels = encoder.processor(images=list(frames), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        reference = encoder.model.get_image_features(pixel_values=pixels)
    as_tensor = encoder.model.get_image_features

    def v5_style(**kwargs: object) -> BaseModelOutputWithPooling:
        projected = as_tensor(**kwargs)
        hidden = torch.zeros(projected.shape[0], 5, 32)  # unpooled states: must not be used
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=projected)

    monkeypatch.setattr(encoder.model, "get_image_features", v5_style)
    assert np.allclose(encoder.encode_frames(frames), reference.numpy(), atol=1e-5)
    assert encoder.encode_many([frames])[0].shape == (16,)


def test_fer_classes_map_onto_the_six_mer_classes() -> None:
    eye = np.eye(7, dtype=np.float32)
    mapped = fer_to_mer(eye)
    as_mer = {FER_CLASSES[i]: EMOTIONS[int(np.argmax(row))] for i, row in enumerate(mapped)}
    assert as_mer["fear"] == "worried" and as_mer["disgust"] == "angry"
    assert as_mer["surprise"] == "surprise" and as_mer["neutral"] == "neutral"
    mixed = np.array([[0.1, 0.2, 0.3, 0.1, 0.1, 0.1, 0.1]], dtype=np.float32)
    result = summarize_expressions(mixed)
    assert result.clip_probs["angry"] == pytest.approx(0.3)
    assert result.clip_probs["worried"] == pytest.approx(0.3)
    assert sum(result.clip_probs.values()) == pytest.approx(1.0)


def test_fer_model_file_and_bad_paths(tmp_path: Path) -> None:
    path = fer_model_path()
    assert path.name == "emotion_model_quantized.tflite" and path.is_file()
    with pytest.raises(ModelLoadError, match="facial_expression"):
        load_fer_classifier(tmp_path / "missing.tflite")
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="LiteRT"):
        load_fer_classifier(garbage)


@pytest.mark.slow
def test_fer_says_happy_on_the_astronaut() -> None:
    classifier = load_fer_classifier()
    photo = astronaut()
    box = load_face_detector().detect(photo)[0]
    probs7 = classifier.classify(photo[None], [box])
    assert probs7.shape == (1, 7)
    assert FER_CLASSES[int(np.argmax(probs7[0]))] == "happy" and probs7[0, 3] > 0.9


@pytest.mark.slow
def test_visual_tool_on_talking_face_frames(tmp_path: Path, tiny_clip: Path) -> None:
    from meragent.data.synth import face_frames

    frames = np.stack(list(face_frames(4)))
    media = DecodedMedia(clip_id="c1", sample_rate=16000, duration=2.0, frames=frames)
    cache = FeatureCache(tmp_path / "features")
    encoder = Lazy(lambda: load_clip_encoder(str(tiny_clip)))
    from meragent.tools.modality_tools import EncoderSlot

    tool = VisualTool(
        cache=cache,
        detector=Lazy(load_face_detector),
        encoder=EncoderSlot(encoder, "tiny-clip-UTT", "tiny-clip"),
        expression=Lazy(load_fer_classifier),
    )
    clue = tool.analyze(Clip(id="c1"), media)
    assert clue.available and clue.modality is Modality.VISUAL
    assert clue.probs is not None and max(clue.probs, key=clue.probs.__getitem__) == "happy"
    assert clue.data["faces_found"] == 4 and NO_FACE not in clue.flags
    assert "happy" in clue.text
    assert clue.feature_ref == str(cache.path("tiny-clip-UTT", "c1"))
    assert cache.load("tiny-clip-UTT", "c1").shape == (16,)
    assert cache.load("fer-UTT", "c1").shape == (7,)
    assert len(clue.data["frame_probs"]) == 4
    blank = DecodedMedia(clip_id="c2", sample_rate=16000, duration=1.0, frames=grey_frames(2))
    flagged = tool.analyze(Clip(id="c2"), blank)
    assert flagged.available and NO_FACE in flagged.flags and flagged.data["faces_found"] == 0
    no_video = DecodedMedia(clip_id="c3", sample_rate=16000, duration=1.0)
    assert not tool.analyze(Clip(id="c3"), no_video).available
