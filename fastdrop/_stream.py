"""fastdrop's module stream of (seed, offset) pairs for calls made with ``seed=None``.

Each such call takes the stream's seed and the next unused word offset, then advances the offset
past the words it drew, rounded up to a whole Philox counter, so no counter is ever used twice.
The seed starts from OS entropy; ``manual_seed`` makes the stream reproducible. A lock keeps
concurrent callers from taking the same offsets.
"""

from __future__ import annotations

import secrets
import threading

from fastdrop import _validate
from fastdrop._contract import MAX_WORD_INDEX

_lock = threading.Lock()
_seed = secrets.randbits(64)
_next_offset = 0


def manual_seed(seed: int) -> None:
    """Reset fastdrop's stream: later ``seed=None`` calls draw from (seed, 0), (seed, n0), ..."""
    global _seed, _next_offset
    seed = _validate.seed(seed)
    with _lock:
        _seed, _next_offset = seed, 0


def stream_state() -> tuple[int, int]:
    """The (seed, next offset) the next ``seed=None`` call would use."""
    with _lock:
        return _seed, _next_offset


def take(n_words: int) -> tuple[int, int]:
    """Reserve ``n_words`` words of the stream; returns the (seed, offset) to draw them from."""
    global _next_offset
    with _lock:
        offset = _next_offset
        end = offset + ((n_words + 3) // 4) * 4
        if end - 1 > MAX_WORD_INDEX:
            raise RuntimeError("fastdrop's stream for this seed is used up; call fastdrop.manual_seed")
        _next_offset = end
        return _seed, offset
