"""Process-local cache of decoded clips, so the graph state carries references, not arrays.

``load_media`` decodes once and the three tool nodes (running in parallel) read the same arrays.
After a resume in a fresh process the cache is empty and the first node that needs the media
decodes it again; a per-clip lock makes the parallel nodes wait for one decode instead of three.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from meragent.data.media_types import DecodedMedia
from meragent.schema import Clip

MediaDecoder = Callable[[Clip], DecodedMedia]


class MediaCache:
    """A bounded LRU of decoded media keyed by clip id."""

    def __init__(self, decoder: MediaDecoder, *, max_items: int = 64) -> None:
        self._decoder = decoder
        self._max_items = max(1, max_items)
        self._items: OrderedDict[str, DecodedMedia] = OrderedDict()
        self._lock = threading.Lock()
        self._clip_locks: dict[str, threading.Lock] = {}

    def get(self, clip: Clip) -> DecodedMedia:
        """The clip's decoded media, decoding it on first use (MediaError propagates)."""
        with self._lock:
            if clip.id in self._items:
                self._items.move_to_end(clip.id)
                return self._items[clip.id]
            clip_lock = self._clip_locks.setdefault(clip.id, threading.Lock())
        with clip_lock:
            with self._lock:
                cached = self._items.get(clip.id)
            if cached is not None:
                return cached
            media = self._decoder(clip)
            self.put(clip.id, media)
            return media

    def put(self, clip_id: str, media: DecodedMedia) -> None:
        """Store media obtained another way (e.g. an empty stand-in for a text-only clip)."""
        with self._lock:
            self._items[clip_id] = media
            self._items.move_to_end(clip_id)
            while len(self._items) > self._max_items:
                self._items.popitem(last=False)

    def drop(self, clip_id: str) -> None:
        """Forget a clip once its graph run is over."""
        with self._lock:
            self._items.pop(clip_id, None)
            self._clip_locks.pop(clip_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def empty_media(clip_id: str, sample_rate: int, flag: str) -> DecodedMedia:
    """Media with no streams: what a text-only (subtitle) clip has to offer."""
    return DecodedMedia(clip_id=clip_id, sample_rate=sample_rate, duration=0.0, flags=[flag])


def default_decoder(*, num_frames: int = 8, sample_rate: int = 16000) -> MediaDecoder:
    """Decode with ``meragent.data.media.decode_media`` (video, audio-only, or text-only clips)."""

    def decode(clip: Clip) -> DecodedMedia:
        from meragent.data.media import decode_media

        path = clip.video or clip.audio
        if path is None:
            return empty_media(clip.id, sample_rate, "no_media_file")
        return decode_media(
            path,
            clip_id=clip.id,
            num_frames=num_frames,
            sample_rate=sample_rate,
            audio_path=clip.audio if clip.video is not None else None,
        )

    return decode
