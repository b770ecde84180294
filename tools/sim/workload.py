"""The simulated SDK's workload: billing.txt's typical scenarios as the record() calls an SDK
makes on the device meter (firmware_py.meter), drawn from a seeded random mix.

Each scenario is a list of meter.record(rid, item, count=.., model=.., image=.., direct=..)
calls. The mix covers the named mixes of firmware_py.billing.SCENARIOS (standard, lite and
text chat, knowledge base, translation, video, news radio) plus premium models (multipliers),
agent sessions that span rounds (translation and stories: the launch fee once, later rounds of
the session free, meter rule M5), photo analysis in direct mode within the 640x480 constraint and the
tour guide with proactive image analyses.
"""
from __future__ import annotations

import random

# name, weight, [(item, kwargs)]
SCENARIOS: list[tuple[str, int, list[tuple[str, dict]]]] = [
    ("standard-chat", 30, [("asr-standard", {}), ("intent", {}), ("tts-standard", {}), ("chat", {})]),
    ("lite-chat", 15, [("asr-lite", {}), ("tts-lite", {}), ("chat", {})]),
    ("text-chat", 8, [("intent", {}), ("chat", {})]),
    ("kb", 8, [("asr-lite", {}), ("intent", {}), ("tts-standard", {}), ("kb", {})]),
    ("premium", 8, [("asr-standard", {"model": "fun-asr"}), ("intent", {}),
                    ("tts-standard", {"model": "cosyvoice-v3-plus"}), ("chat", {"model": "qwen-max"})]),
    ("deepseek-kb", 3, [("asr-lite", {}), ("intent", {}), ("tts-lite", {}), ("kb", {"model": "deepseek-v3"})]),
    ("translation-session", 8, [("asr-lite", {}), ("intent", {}), ("tts-standard", {}), ("translation", {})]),
    ("stories-session", 4, [("asr-lite", {}), ("intent", {}), ("tts-standard", {"count": 6}), ("stories", {})]),
    ("radio", 4, [("asr-lite", {}), ("intent", {}), ("tts-standard", {"count": 10}), ("radio", {})]),
    ("video", 3, [("asr-lite", {}), ("intent", {}), ("tts-standard", {}), ("video", {})]),
    ("photo-balanced", 4, [("intent", {}), ("photo-balanced", {"image": (640, 480), "direct": True})]),
    ("photo-portrait", 2, [("intent", {}), ("photo-balanced", {"image": (480, 640), "direct": True})]),
    ("tour-guide", 3, [("asr-lite", {}), ("intent", {}), ("tts-standard", {}), ("tour-guide", {}),
                       ("tour-guide-image", {"count": 3})]),
]
NAMES = [s[0] for s in SCENARIOS]
_WEIGHTS = [s[1] for s in SCENARIOS]
# the cost hint a device passes to start_round (the lease check): the dearest common round
HINT = 12_000


def pick(rng: random.Random) -> int:
    """Index of a scenario drawn with the mix's weights."""
    return rng.choices(range(len(SCENARIOS)), _WEIGHTS)[0]


def record(meter, rid: int, idx: int, now: int) -> None:
    """Make the SDK's record() calls of scenario idx on an open round."""
    for item, kw in SCENARIOS[idx][2]:
        meter.record(rid, item, now=now, **kw)
