"""Prompts for the audio and video LLM describers (our own wording).

They ask for what the MER2024 baselines ask an MLLM for: attend to the cues of the modality
(voice, or face, body, surroundings) and to the spoken words, write a detailed description of the
emotional cues, and finish with the person's predicted emotional state. The subtitle is inserted
so the model can weigh the words against how they are delivered.
"""

from __future__ import annotations

NO_SUBTITLE = "(no words were transcribed for this clip)"

AUDIO_PROMPT = (
    'What the speaker says in this recording: "{subtitle}"\n'
    "You are a specialist in how people reveal their feelings. Listen closely to the voice: "
    "tone and pitch, loudness, tempo, pauses, trembling, sighs, laughter or other non-verbal "
    "sounds, and weigh them together with the words that are spoken. Write a detailed account of "
    "every cue that tells how the speaker feels, then close with your judgement of the speaker's "
    "emotional state."
)

VIDEO_PROMPT = (
    'What the person says in this video: "{subtitle}"\n'
    "You are a specialist in how people reveal their feelings. Study the person's face and how "
    "their expression changes, their gestures, posture and movements, the setting they are in, "
    "and the words they speak. Write a detailed account of every cue that tells how the person "
    "feels, then close with your judgement of the person's emotional state."
)

AUDIO_VIDEO_PROMPT = (
    'What the person says in this video: "{subtitle}"\n'
    "You are a specialist in how people reveal their feelings. Study the person's face and how "
    "their expression changes, their gestures, posture and movements, the setting, the sound of "
    "their voice (tone, pitch, loudness, tempo, pauses) and the words they speak. Write a "
    "detailed account of every cue that tells how the person feels, then close with your "
    "judgement of the person's emotional state."
)


def _quoted(subtitle: str) -> str:
    text = " ".join(subtitle.split())
    return text.replace('"', "'") if text else NO_SUBTITLE


def audio_prompt(subtitle: str) -> str:
    """The audio-LLM instruction with the subtitle inserted."""
    return AUDIO_PROMPT.format(subtitle=_quoted(subtitle))


def video_prompt(subtitle: str) -> str:
    """The video-LLM instruction with the subtitle inserted."""
    return VIDEO_PROMPT.format(subtitle=_quoted(subtitle))


def audio_video_prompt(subtitle: str) -> str:
    """The instruction for a model that hears and sees the clip, subtitle inserted."""
    return AUDIO_VIDEO_PROMPT.format(subtitle=_quoted(subtitle))
