"""Reconnect delays for the device's supervisor loop: capped exponential backoff with jitter.

The MQTT client (firmware_py/mqtt.py) never retries by itself; the main loop asks this module
how long to wait before the next connect() (the umqtt.simple / umqtt.robust split). Pure
integer arithmetic, no clock and no random source of its own: the caller passes one random
integer per call (os.urandom on the device, a seeded generator in tests).

Rules:
 B1 ceiling(attempt) = min(cap_ms, base_ms * 2**attempt), attempt = 0 for the first retry.
 B2 "equal jitter": the delay is ceiling//2 + rnd % (ceiling - ceiling//2 + 1), so it lies in
    [ceiling//2, ceiling]: never a hot loop (at least half the ceiling) and a fleet that lost
    its broker at the same instant spreads its reconnects over the other half.
 B3 the delay never exceeds cap_ms, for any attempt (no overflow: the doubling stops at the cap).
"""


def ceiling(attempt, base_ms, cap_ms):
    """B1: the upper bound of the delay before retry number attempt (0-based)."""
    if attempt < 0 or base_ms < 1 or cap_ms < base_ms:
        raise ValueError("need attempt >= 0 and 1 <= base_ms <= cap_ms")
    c = base_ms
    while attempt and c < cap_ms:
        c <<= 1
        attempt -= 1
    return c if c < cap_ms else cap_ms


def next_delay(attempt, base_ms, cap_ms, rnd):
    """B2: milliseconds to wait before retry number attempt (0-based); rnd is any int >= 0."""
    if rnd < 0:
        raise ValueError("rnd must be >= 0")
    c = ceiling(attempt, base_ms, cap_ms)
    half = c // 2
    return half + rnd % (c - half + 1)


class Backoff:
    """The attempt counter of one supervisor: failure(rnd) -> delay in ms, success() resets."""

    def __init__(self, base_ms=1000, cap_ms=300000):
        ceiling(0, base_ms, cap_ms)  # validates
        self.base_ms = base_ms
        self.cap_ms = cap_ms
        self.attempt = 0

    def failure(self, rnd):
        """The delay before the next try after one more failure."""
        d = next_delay(self.attempt, self.base_ms, self.cap_ms, rnd)
        self.attempt += 1
        return d

    def success(self):
        """The connection is up: the next failure waits base-sized delays again."""
        self.attempt = 0
