# Drives firmware_py.mqtt.MQTTClient from stdin, one command a line, for the integration tests
# (tests/firmware/test_mqtt_micropython.py). Runs unchanged on MicroPython and CPython:
#   MICROPYPATH=/work/main micropython tests/firmware/mqtt_driver.py
# Replies: "msg <topic> <hex payload>" for each message delivered to the callback, then one of
# "ok ...", "err <rc> <reason>" (MQTTConnectionError), "valueerr <reason>" (ValueError).
#   new key=value ...     client_id host port user password keepalive ca sni max_packet
#                         timeout_ms max_inflight rx_size (ca: PEM file -> TLS, sni: server_hostname)
#   connect <0|1>         clean session; ok <session_present 0|1> <resent>
#   sub <filter> <qos>    ok <granted>
#   unsub <filter>        ok
#   pub <topic> <hex> <qos>   ok <pid>
#   poll <ms>             ok <packets> <inflight count>
#   wait <n> <ms>         poll until n messages arrived in this command or ms passed; ok <n>
#   inflight              ok <pid> ...
#   oversized             ok <client.oversized> <topic> <length> of the last on_oversized call
#   close | disconnect    ok
#   mem                   ok <gc.mem_alloc after gc.collect> <gc.mem_free>
#   quit
import binascii
import gc
import sys

from firmware_py.mqtt import MQTTClient, MQTTConnectionError

try:
    from time import ticks_diff, ticks_ms
except ImportError:
    import time

    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

client = None
got = [0]
big = ["-", 0]  # the last on_oversized(topic, length)


def out(line):
    sys.stdout.write(line + "\n")
    if hasattr(sys.stdout, "flush"):
        sys.stdout.flush()


def on_message(topic, payload):
    got[0] += 1
    out("msg %s %s" % (topic, binascii.hexlify(payload).decode()))


def on_oversized(topic, length):
    big[0] = topic
    big[1] = length


def new(args):
    kw = {}
    for a in args:
        k, v = a.split("=", 1)
        kw[k] = v
    ssl = None
    if "ca" in kw:
        from firmware_py.mqtt_tls import tls_context  # only TLS runs load it
        ssl = tls_context(kw["ca"])
    return MQTTClient(kw["client_id"], kw.get("host", "127.0.0.1"), int(kw["port"]),
                      user=kw.get("user"), password=kw.get("password"),
                      keepalive=int(kw.get("keepalive", "60")), ssl=ssl,
                      server_hostname=kw.get("sni"), callback=on_message,
                      max_packet=int(kw.get("max_packet", "2048")),
                      timeout_ms=int(kw.get("timeout_ms", "10000")),
                      max_inflight=int(kw.get("max_inflight", "8")),
                      rx_size=int(kw.get("rx_size", "256")))


def run(words):
    global client
    c = words[0]
    a = words[1:]
    if c == "new":
        client = None
        gc.collect()
        client = new(a)
        client.on_oversized = on_oversized
        return "ok"
    if c == "connect":
        sp = client.connect(a[0] == "1")
        return "ok %d %d" % (1 if sp else 0, client.resent)
    if c == "sub":
        return "ok %d" % client.subscribe(a[0], int(a[1]))
    if c == "unsub":
        client.unsubscribe(a[0])
        return "ok"
    if c == "pub":
        return "ok %d" % client.publish(a[0], binascii.unhexlify(a[1]), int(a[2]))
    if c == "poll":
        n = client.poll(int(a[0]))
        return "ok %d %d" % (n, len(client.inflight))
    if c == "wait":
        got[0] = 0
        t0 = ticks_ms()
        while got[0] < int(a[0]):
            left = int(a[1]) - ticks_diff(ticks_ms(), t0)
            if left <= 0:
                break
            client.poll(left)
        return "ok %d" % got[0]
    if c == "inflight":
        return "ok " + " ".join(str(p) for p in sorted(client.inflight))
    if c == "oversized":
        return "ok %d %s %d" % (client.oversized, big[0], big[1])
    if c == "close":
        client.close()
        return "ok"
    if c == "disconnect":
        client.disconnect()
        return "ok"
    if c == "mem":
        gc.collect()
        return "ok %d %d" % (gc.mem_alloc(), gc.mem_free())
    return "valueerr unknown command " + c


while True:
    line = sys.stdin.readline()
    if not line:
        break
    words = line.split()
    if not words:
        continue
    if words[0] == "quit":
        break
    try:
        out(run(words))
    except MQTTConnectionError as e:
        out("err %d %s" % (e.rc, e.reason))
    except ValueError as e:
        out("valueerr %s" % e)
