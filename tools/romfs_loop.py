# The device loop for the ROMFS heap bench and test (not part of the firmware): imports every
# module the firmware's loop needs, builds the MQTT client's buffers, and serves rounds through
# firmware_py.meter.Meter with a real journal; the cloud (tools/romfs_run.py) is the
# parent process, reached over stdin/stdout instead of a broker (the firmware tests cover MQTT).
# Run through the shim:  micropython -X heapsize=H romboot.py IMAGE -m romfs_loop DIR ROUNDS
# Lines out:  mods live=<B>                 live heap after the imports (romboot's base and
#                                            the image buffer included)
#             client live=<B>               ... after the meter and the MQTT client exist
#             pub <suffix> <hex>  then  wait     the meter's publishes; the parent answers with
#                                                `msg <suffix> <hex>` lines and `go`
#             served <i> <ucny>             end_round returned OK for round i
#             done rounds=<n> hwm=<B> peak=<B> acked=<seq> unacked=<n> journal_bytes=<B>
# hwm: the most live heap after gc.collect() at the points "round" and "sync"; peak: the most
# gc.mem_alloc() seen just before those collections (garbage included).
import gc
import sys

gc.collect()
from firmware_py import backoff, cbor, device_session, jframe, journal, lease, mac  # noqa
from firmware_py import meter, mqtt, mqtt_codec, pricebook, proto, rating, state  # noqa
try:
    import firmware_py.main  # noqa: F401  (the loop's shell, when the image has it)
except ImportError:
    pass
from binascii import hexlify, unhexlify

WS = 7
DEV = 1042
KEY = bytes(range(32))
T0 = 1767225600
CFG = {"batch": 4, "age": 30, "rto": 20, "window": 3, "checkpoint": 8, "ack_every": 2,
       "max_bytes": 32768, "segment_bytes": 2048}
VOICE = ("asr-standard", "intent", "chat", "tts-standard")
st = [0, 0]  # hwm, peak


def point():
    a = gc.mem_alloc()
    gc.collect()
    live = gc.mem_alloc()
    if a > st[1]:
        st[1] = a
    if live > st[0]:
        st[0] = live


def out(line):
    sys.stdout.write(line)
    sys.stdout.write("\n")


def sync(m, now):
    """Hand the meter's publishes to the parent; feed its answers back."""
    for suffix, data in m.publishes():
        out("pub %s %s" % (suffix, hexlify(data).decode()))
    out("wait")
    while True:
        ln = sys.stdin.readline().split()
        if not ln or ln[0] == "go":
            break
        m.receive(ln[1], unhexlify(ln[2]), now)
    point()


def main(argv):
    d, rounds = argv[0], int(argv[1])
    gc.collect()
    out("mods live=%d" % gc.mem_alloc())
    m = meter.Meter(d, WS, DEV, 1, KEY, None, CFG)
    user = "%d/%d" % (WS, DEV)
    client = mqtt.MQTTClient(user, "127.0.0.1", 1883, user=user, password="x", keepalive=10,
                             max_packet=1024, rx_size=128, max_inflight=4)
    now = T0
    m.open(now)
    m.connected(now)
    sync(m, now)
    gc.collect()
    out("client live=%d" % gc.mem_alloc())
    for i in range(rounds):
        now += 7
        ok, code, rid = m.start_round(now)
        if not ok:
            out("refused %d %d" % (i, code))
            sync(m, now)
            continue
        for item in VOICE:
            m.record(rid, item)
        code, ucny = m.end_round(rid, now)
        if code == meter.OK:
            out("served %d %d" % (i, ucny))
        else:
            out("refused %d %d" % (i, code))
        point()
        m.tick(now)
        sync(m, now)
    for _ in range(6):
        now += 40
        m.drain(now)
        sync(m, now)
    s = m.status()
    m.close()
    client.close()
    out("done rounds=%d hwm=%d peak=%d acked=%d unacked=%d journal_bytes=%d"
        % (s["rounds"], st[0], st[1], s["acked"], s["unacked"], s["journal_bytes"]))
    return 0
