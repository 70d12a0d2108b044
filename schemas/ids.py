"""UUIDv7 event ids (RFC 9562): time-ordered, so ids sort like the events they name.

A seeded generator makes the simulator reproducible: same seed and clock, same ids.
"""

from __future__ import annotations

import os
import random
import re
import time
import uuid

UUID7_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
_UUID7_RE = re.compile(UUID7_PATTERN)


def uuid7_from_parts(unix_ms: int, rand_a: int, rand_b: int) -> str:
    """Assemble a UUIDv7 string from a millisecond timestamp and 12 + 62 random bits."""
    value = (unix_ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= (rand_a & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand_b & 0x3FFF_FFFF_FFFF_FFFF
    return str(uuid.UUID(int=value))


def uuid7_time_ms(event_id: str) -> int:
    """The millisecond timestamp embedded in a UUIDv7."""
    return uuid.UUID(event_id).int >> 80


def is_uuid7(value: str) -> bool:
    return bool(_UUID7_RE.match(value))


class Uuid7Generator:
    """Monotonic UUIDv7s: within one millisecond, rand_a counts up (RFC 9562, method 1).

    With ``seed`` the random bits are reproducible; the clock is whatever the caller
    passes to :meth:`new` (the simulator passes simulated time).
    """

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed) if seed is not None else None
        self._last_ms = -1
        self._counter = 0

    def _bits(self, n: int) -> int:
        if self._rng is not None:
            return self._rng.getrandbits(n)
        return int.from_bytes(os.urandom((n + 7) // 8), "big") & ((1 << n) - 1)

    def new(self, unix_ms: int | None = None) -> str:
        ms = int(time.time() * 1000) if unix_ms is None else unix_ms
        if ms <= self._last_ms:
            ms = self._last_ms
            self._counter += 1
            if self._counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                ms += 1
                self._counter = self._bits(8)
        else:
            self._counter = self._bits(8)  # leave headroom for the counter to grow
        self._last_ms = ms
        return uuid7_from_parts(ms, self._counter, self._bits(62))


_default_generator = Uuid7Generator()


def new_event_id() -> str:
    """A fresh UUIDv7 from the wall clock (producers; never inside the reducer)."""
    return _default_generator.new()
