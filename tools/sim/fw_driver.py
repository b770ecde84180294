# The SDK stand-in for the firmware tests (tests/firmware): a workload module for
# firmware_py.main (config "workload": "fw_driver") that serves a deterministic mix of rounds
# through the meter's API. Kept beside the simulator's (mp_workload.py) so that the unix32
# firmware (tools/mpbuild.py) freezes both; not part of the device image. Runs unchanged on
# MicroPython and CPython.
#
# workload_args: first (first round number, default 0), rounds (stop before this number),
#   per_step (rounds per loop pass, 1), gap_ms (wait between passes, 0), stop_codes (refusal
#   codes that end the workload, []), max_refused (consecutive refusals that end it, 0: never).
# Output, one line each, flushed before the next meter call:
#   begin <i>              about to call end_round for round i (its services were used)
#   served <i> <ucny> <c>  end_round returned OK: the SDK was told round i is accepted
#   refused <i> <code>     start_round refused round i (printed when the code changes)
#   sync <n>               only with FW_LOCKSTEP=1 in the environment: the n-th durable write
#                          (journal or state) of this process is done; the driver then waits
#                          for one line on stdin, so a test can kill -9 it at exactly that point
# Round i carries its own number in two price-free counts (memory: i % 100 + 1, web-search:
# i // 100 + 1), so the cloud's booked rounds name the rounds they are (mark()).
import os
import sys

LOCK = os.getenv("FW_LOCKSTEP") == "1"
MIX = (
    (("asr-standard", None, 1), ("intent", None, 1), ("chat", None, 1),
     ("tts-standard", None, 1)),
    (("asr-lite", None, 1), ("intent", None, 1), ("chat", None, 1), ("tts-lite", None, 1)),
    (("asr-standard", "fun-asr", 1), ("intent", None, 1), ("chat", "qwen-max", 1),
     ("tts-standard", "cosyvoice-v3-plus", 1)),
    (("asr-standard", None, 1), ("intent", None, 1), ("kb", "deepseek-v3", 1),
     ("tts-standard", None, 1)),
    (("asr-lite", None, 1), ("intent", None, 1), ("radio", None, 1), ("tts-lite", None, 3)),
)
LIGHT = (("asr-lite", None, 1), ("intent", None, 1), ("chat", None, 1), ("tts-lite", None, 1))
st = {"i": 0, "end": 0, "per": 1, "gap": 0, "stop": (), "max_ref": 0, "ref": 0, "last": -1,
      "n": 0, "rid": 0}


def out(line):
    sys.stdout.write(line + "\n")
    fl = getattr(sys.stdout, "flush", None)
    if fl is not None:
        fl()


def sync(f):
    f.flush()
    if LOCK:
        st["n"] += 1
        out("sync %d" % st["n"])
        sys.stdin.readline()


def mark(i):
    """The (memory count, web-search count) that name round i."""
    return i % 100 + 1, i // 100 + 1


def start(meter, args):
    st["i"] = args.get("first", 0)
    st["end"] = args.get("rounds", 10)
    st["per"] = args.get("per_step", 1)
    st["gap"] = args.get("gap_ms", 0)
    st["stop"] = tuple(args.get("stop_codes", ()))
    st["max_ref"] = args.get("max_refused", 0)


def one(meter, now, i):
    if st["rid"]:  # an end_round the journal refused: the SDK ends the same round again
        return end(meter, now, i, st["rid"], 0)
    ok, code, rid = meter.start_round(now)
    if not ok:
        st["ref"] += 1
        if code != st["last"]:
            st["last"] = code
            out("refused %d %d" % (i, code))
        return code
    st["ref"] = 0
    st["last"] = -1
    for item, model, count in (LIGHT if code == 1 else MIX[i % len(MIX)]):
        meter.record(rid, item, count, model)
    m, w = mark(i)
    meter.record(rid, "memory", m)
    meter.record(rid, "web-search", w)
    out("begin %d" % i)
    return end(meter, now, i, rid, code)


def end(meter, now, i, rid, code):
    c, u = meter.end_round(rid, now)
    if c != 0:
        st["rid"] = rid
        out("refused %d %d" % (i, c))
        return c
    st["rid"] = 0
    out("served %d %d %d" % (i, u, code))
    return -1


def step(meter, now):
    for _ in range(st["per"]):
        i = st["i"]
        if i >= st["end"]:
            return -1
        code = one(meter, now, i)
        if code >= 0:
            if code in st["stop"] or (st["max_ref"] and st["ref"] >= st["max_ref"]):
                return -1
            return 50
        st["i"] = i + 1
    return st["gap"]
