# The simulator's SDK inside a real MicroPython firmware process: a workload module for
# firmware_py.main (config "workload": "mp_workload"), compiled with mpy-cross beside the image.
# Runs unchanged on MicroPython and CPython (no typing, no floats).
#
# workload_args: first (first round number), rounds (stop before this number), cut (round
#   numbers at which the process is to be killed: "c<i>" asks for the kill right after the
#   round's record is flushed to the journal (served), "b<i>" before end_round (not served)).
# Output lines (flushed): "served <i> <ucny>"; "cut <i> <1|0> <ucny>" and then it blocks on
# stdin until the simulator kills it with SIGKILL.
import sys

from firmware_py import rating

MIX = (
    (("asr-standard", None, 1), ("intent", None, 1), ("tts-standard", None, 1), ("chat", None, 1)),
    (("asr-lite", None, 1), ("tts-lite", None, 1), ("chat", None, 1)),
    (("asr-standard", "fun-asr", 1), ("intent", None, 1), ("tts-standard", None, 1),
     ("chat", "qwen-max", 1)),
    (("asr-lite", None, 1), ("intent", None, 1), ("tts-standard", None, 1), ("kb", None, 1)),
    (("asr-lite", None, 1), ("intent", None, 1), ("tts-standard", None, 10), ("radio", None, 1)),
)
st = {"i": 0, "end": 0, "cut": (), "armed": 0, "rid": 0, "u": 0}


def out(line):
    sys.stdout.write(line + "\n")
    fl = getattr(sys.stdout, "flush", None)
    if fl is not None:
        fl()


def block():
    while True:
        sys.stdin.readline()


def sync(f):
    f.flush()
    if st["armed"]:  # the first durable write inside end_round is the round's record
        st["armed"] = 0
        out("cut %d 1 %d" % (st["i"], st["u"]))
        block()


def start(meter, args):
    st["i"] = args.get("first", 0)
    st["end"] = args.get("rounds", 10)
    st["cut"] = args.get("cut", [])


def step(meter, now):
    i = st["i"]
    if i >= st["end"]:
        return -1
    rid = st["rid"]
    if not rid:
        ok, code, rid = meter.start_round(now, 18000)
        if not ok:
            return 100
        for item, model, count in MIX[i % len(MIX)]:
            meter.record(rid, item, count, model)
        st["rid"] = rid
    if ("b%d" % i) in st["cut"]:
        out("cut %d 0 0" % i)
        block()
    st["u"] = rating.total(meter.s.book, meter.rounds[rid][1])
    st["armed"] = 1 if ("c%d" % i) in st["cut"] else 0
    c, u = meter.end_round(rid, now)
    st["armed"] = 0
    if c != 0:
        return 100  # refused: the same round is ended again on the next pass
    st["rid"] = 0
    out("served %d %d" % (i, u))
    st["i"] = i + 1
    return 0
