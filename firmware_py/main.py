"""The MicroPython firmware (the board's shell: socket, clock, heap; runs on CPython too): its
configuration file and the one loop that drives the device meter (firmware_py.meter) over the
device's own MQTT client (firmware_py.mqtt). Entry points (the configuration is a JSON file):
    import firmware_py.main; firmware_py.main.run("/flash/em.json")     # returns exit status
    micropython -m firmware_py.main /flash/em.json

The SDK meters rounds with the meter's API (start_round / record / end_round). Either it names
a module in "workload", which run() imports: start(meter, args) is called once after recovery
(args: "workload_args"), then step(meter, now) once per pass, returning the milliseconds the
loop may wait on the network before the next call (0: at once), or -1 when the SDK is done; an
optional sync(f) replaces the journal's flush (fault-injection hook for tests). Or the SDK
builds Firmware(cfg) itself, calls open() and then step(wait_ms) from its own loop.

Configuration: REQUIRED lists the keys without a default, DEFAULTS the others, KINDS every
key's type; firmware_py/README.md (Firmware) says what each means. Rules:
  F1. check() validates the whole configuration once, before flash or network are touched,
      and names every problem with its key; run() raises ConfigError(ValueError) with all.
  F2. One pass, in order: connect when due (F3); meter.tick(now) when the second changed;
      send the meter's publishes (F4); poll the socket up to the wait (downlink goes to
      meter.receive from the MQTT callback; PUBACKs; keepalive); send what that produced;
      log the meter's events. The workload's step runs before each pass.
  F3. Connect with capped exponential backoff and equal jitter (backoff B1-B3, randomness from
      os.urandom): never before the delay is over, never a hot loop. A CONNACK resets it;
      then subscribe em/<ws>/<dev>/down/# (QoS 1) and meter.connected(now), which resends
      every unacked batch and pending lease message (device_session D4). clean_session=False, so downlink
      the broker queued while the device was away is delivered too.
  F4. Publishes go out QoS 1 while connected. Offline, or with the inflight window full, they
      are dropped: the meter resends unacked batches and lease messages on its timers and at
      every connect, and the cloud books (dev, seq) once.
  F5. An MQTTConnectionError anywhere marks the link down and schedules the next connect (F3);
      the meter and the journal never see link trouble.
  F6. Heap: buffers are allocated once (the client's receive chunk and packet buffer, the
      topics); gc.collect() runs at the named points "boot", "connect", "round" (after a
      workload step), "idle" (after a pass that waited) and "drain", and inside recovery at
      "scanned" and "resealed" (meter_base M7). After each new high-water mark of the live
      heap, and always at "boot", it prints `fw heap point=P live=L free=F hwm=H peak=K`
      (peak: the most allocated seen just before a collection, garbage included). With
      "gc_threshold" N > 0, gc.threshold(N) (MicroPython) collects after every N bytes
      allocated: garbage never spreads over the whole heap, so what lives long is allocated
      low and packed, and a small heap does not fragment into holes too small for a packet.
  F7. When the workload is done: meter.drain(now) (open rounds settled, everything sealed, the
      lease returned), passes go on until no round is unsealed or unacked or drain_s passed,
      then meter.close() and DISCONNECT. Exit status 0 when all was acked, 3 when not.
Output: one line per fact on stdout, `fw <what> key=value ...`; tests parse them.
"""
import binascii
import gc
import json
import os
import sys
import time

from firmware_py import VERSION
from firmware_py.backoff import Backoff
from firmware_py.device_session import CFG as SESSION_CFG
from firmware_py.meter import CFG as METER_CFG, Meter
from firmware_py.mqtt import MQTTClient, MQTTConnectionError, ticks_diff, ticks_ms

REQUIRED = ("dev", "ws", "kid", "key", "host", "journal")
# The tables below are constant tuples, frozen into flash with the image: as dicts they would
# hold about a kilobyte of the 32 KiB heap for the whole run, for one check() at start.
DEFAULTS = (("port", 1883), ("user", None), ("password", None), ("ca", None), ("sni", None),
            ("journal_max_bytes", 65536), ("segment_bytes", 4096), ("keepalive", 60),
            ("timeout_ms", 10000), ("max_packet", 2048), ("rx_size", 256), ("max_inflight", 8),
            ("backoff_base_ms", 1000), ("backoff_cap_ms", 300000), ("poll_ms", 1000), ("drain_s", 60),
            ("workload", None), ("gc", True), ("gc_threshold", 4096))   # + the objects: {}
_OBJECTS = ("workload_args", "meter")
# kind of each key: u uint, p positive int, s non-empty str, o str or null, h 64 hex digits,
# d object, b bool
KINDS = (("dev", "p"), ("ws", "u"), ("kid", "u"), ("key", "h"), ("host", "s"), ("journal", "s"),
         ("port", "p"), ("user", "o"), ("password", "o"), ("ca", "o"), ("sni", "o"),
         ("journal_max_bytes", "p"), ("segment_bytes", "p"), ("keepalive", "u"), ("timeout_ms", "p"),
         ("max_packet", "p"), ("rx_size", "p"), ("max_inflight", "p"), ("backoff_base_ms", "p"),
         ("backoff_cap_ms", "p"), ("poll_ms", "u"), ("drain_s", "u"), ("workload", "o"),
         ("workload_args", "d"), ("meter", "d"), ("gc", "b"), ("gc_threshold", "u"))
_KIND_TEXT = (("u", "an integer >= 0"), ("p", "an integer >= 1"), ("s", "a non-empty string"),
              ("o", "a string or null"), ("h", "64 hex digits (32 bytes)"), ("d", "an object"),
              ("b", "true or false"))
_sleep_ms = getattr(time, "sleep_ms", None)


class ConfigError(ValueError):
    """The configuration is unusable; .problems lists every "key: problem"."""

    def __init__(self, problems):
        super().__init__("; ".join(problems))
        self.problems = problems


def _ok(kind, v):
    t = type(v)
    if kind in "up":
        return t is int and v >= (1 if kind == "p" else 0)
    if kind == "s":
        return t is str and len(v) > 0
    if kind == "o":
        return v is None or t is str
    if kind == "h":
        if t is not str or len(v) != 64:
            return False
        try:
            binascii.unhexlify(v)
        except ValueError:
            return False
        return True
    if kind == "d":
        return t is dict
    return t is bool


def _exists(path):
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def check(raw):
    """(cfg with defaults filled in, [problems]) for a decoded configuration (rule F1)."""
    if type(raw) is not dict:
        return None, ["config: not a JSON object"]
    probs = []
    kinds = dict(KINDS)   # transient: freed when check() returns
    cfg: dict = dict(DEFAULTS)
    for k in _OBJECTS:
        cfg[k] = {}
    for k in sorted(raw):
        if k not in kinds:
            probs.append("%s: unknown key" % k)
            continue
        cfg[k] = raw[k]
    for k in sorted(kinds):
        if k not in cfg:
            probs.append("%s: required" % k)
        elif not _ok(kinds[k], cfg[k]):
            probs.append("%s: must be %s, not %r" % (k, dict(_KIND_TEXT)[kinds[k]], cfg[k]))
    if probs:
        return cfg, probs
    if cfg["port"] > 65535:
        probs.append("port: must be at most 65535")
    if cfg["segment_bytes"] < 64:
        probs.append("segment_bytes: must be at least 64")
    if cfg["journal_max_bytes"] < cfg["segment_bytes"]:
        probs.append("journal_max_bytes: must be at least segment_bytes")
    if cfg["backoff_cap_ms"] < cfg["backoff_base_ms"]:
        probs.append("backoff_cap_ms: must be at least backoff_base_ms")
    if cfg["ca"] is not None and not _exists(cfg["ca"]):
        probs.append("ca: no such file %r" % cfg["ca"])
    j = cfg["journal"].rstrip("/")
    parent = j.rsplit("/", 1)[0] if "/" in j else "."
    if not _exists(parent or "/"):
        probs.append("journal: parent directory %r does not exist" % parent)
    for k in sorted(cfg["meter"]):
        v = cfg["meter"][k]
        if k not in METER_CFG and k not in SESSION_CFG:
            probs.append("meter.%s: unknown key" % k)
        elif type(v) is not int or v < 0:
            probs.append("meter.%s: must be an integer >= 0, not %r" % (k, v))
        elif k in ("max_bytes", "segment_bytes"):
            probs.append("meter.%s: set journal_max_bytes / segment_bytes instead" % k)
    return cfg, probs


def load(path):
    """The checked configuration of the JSON file at path; ConfigError lists every problem."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError as exc:
        raise ConfigError(["config: cannot read %r: %s" % (path, exc)])
    except ValueError as exc:
        raise ConfigError(["config: %r is not JSON: %s" % (path, exc)])
    cfg, probs = check(raw)
    if probs:
        raise ConfigError(probs)
    return cfg


def out(line):
    """One output line, flushed (CPython buffers a pipe)."""
    sys.stdout.write(line + "\n")
    fl = getattr(sys.stdout, "flush", None)
    if fl is not None:
        fl()


def _now():
    return int(time.time())


def _rnd():
    b = os.urandom(2)
    return b[0] << 8 | b[1]


def sleep_ms(ms):
    if _sleep_ms is not None:
        _sleep_ms(ms)
    else:
        time.sleep(ms / 1000)


class Firmware:
    """The meter, the MQTT client and the reconnect supervisor of one device (F2-F7)."""

    def __init__(self, cfg, sync=None):
        mcfg = dict(cfg["meter"])
        mcfg["max_bytes"] = cfg["journal_max_bytes"]
        mcfg["segment_bytes"] = cfg["segment_bytes"]
        self.cfg = cfg
        dev = cfg["dev"]
        self.meter = Meter(cfg["journal"], cfg["ws"], dev, cfg["kid"],
                           binascii.unhexlify(cfg["key"]), None, mcfg, sync,
                           firmware=VERSION + " micropython")
        ssl = None
        if cfg["ca"] is not None:
            from firmware_py.mqtt_tls import tls_context  # only a TLS image carries it
            ssl = tls_context(cfg["ca"])
        user = cfg["user"] or "%d/%d" % (cfg["ws"], dev)  # docs/protocol.md, Topics
        self.client = MQTTClient(user, cfg["host"], cfg["port"], user=user,
                                 password=cfg["password"], keepalive=cfg["keepalive"], ssl=ssl,
                                 server_hostname=cfg["sni"], callback=self._message,
                                 max_packet=cfg["max_packet"], rx_size=cfg["rx_size"],
                                 max_inflight=cfg["max_inflight"], timeout_ms=cfg["timeout_ms"])
        self.backoff = Backoff(cfg["backoff_base_ms"], cfg["backoff_cap_ms"])
        self.meter.heap_point = self.heap
        self.prefix = "em/%d/%d/" % (cfg["ws"], dev)
        self.down = self.prefix + "down/#"
        self.topics: dict = {}
        self.retry_from = ticks_ms()
        self.retry_wait = 0
        self.last_tick = 0
        self.dropped = 0
        self.connects = 0
        self.gc = cfg["gc"]
        thr = getattr(gc, "threshold", None)
        if self.gc and cfg["gc_threshold"] and thr is not None:
            thr(cfg["gc_threshold"])
        self.hwm = 0
        self.peak = 0
        self._mem = getattr(gc, "mem_alloc", None)

    # ---------------------------------------------------------------- heap (F6)
    def heap(self, point):
        if not self.gc:
            return
        mem = self._mem
        if mem is None:
            gc.collect()
            return
        a = mem()
        gc.collect()
        live = mem()
        if a > self.peak:
            self.peak = a
        if live > self.hwm or point == "boot":
            self.hwm = max(self.hwm, live)
            out("fw heap point=%s live=%d free=%d hwm=%d peak=%d"
                % (point, live, getattr(gc, "mem_free")(), self.hwm, self.peak))

    # ---------------------------------------------------------------- lifecycle
    def open(self):
        """Recover the meter (meter_base M7); prints `fw boot ...`."""
        rep = self.meter.open(_now())
        j = rep["journal"]
        out("fw boot dev=%d boot=%d records=%d unacked=%d torn=%d damaged=%d rededucted=%d "
            "resend=%d unsealed=%d" % (self.cfg["dev"], rep["boot"], j["records"], j["unacked"],
                                       len(j["torn"]), len(j["damaged"]), rep["rededucted"],
                                       rep["resend"], rep["unsealed"]))
        self.heap("boot")
        return rep

    def close(self):
        self.meter.close()
        self.client.disconnect()

    # ---------------------------------------------------------------- network (F3-F5)
    def _lost(self, why):
        self.client.close()
        self.retry_from = ticks_ms()
        self.retry_wait = self.backoff.failure(_rnd())
        out("fw lost retry_ms=%d attempt=%d reason=%s"
            % (self.retry_wait, self.backoff.attempt, why))

    def _connect(self, now):
        try:
            sp = self.client.connect(False)
            self.client.subscribe(self.down, 1)
        except MQTTConnectionError as exc:
            self._lost(exc.reason)
            return
        self.backoff.success()
        self.connects += 1
        out("fw connected n=%d session=%d resent=%d"
            % (self.connects, 1 if sp else 0, self.client.resent))
        self.meter.connected(now)
        self.heap("connect")

    def _message(self, topic, payload):
        p = self.prefix
        if topic[:len(p)] == p:
            self.meter.receive(topic[len(p):], payload, _now())

    def _topic(self, suffix):
        t = self.topics.get(suffix)
        if t is None:
            t = self.topics[suffix] = self.prefix + suffix
        return t

    def _send(self):
        c = self.client
        for suffix, data in self.meter.publishes():
            if not c.connected or len(c.inflight) >= c.max_inflight:
                self.dropped += 1  # F4: the meter resends
                continue
            try:
                c.publish(self._topic(suffix), data, 1)
            except MQTTConnectionError as exc:
                self._lost(exc.reason)

    def step(self, wait_ms=0):
        """One pass of the loop (F2); waits at most wait_ms on the network."""
        now = _now()
        c = self.client
        if not c.connected and ticks_diff(ticks_ms(), self.retry_from) >= self.retry_wait:
            self._connect(now)
        if now != self.last_tick:
            self.last_tick = now
            self.meter.tick(now)
        self._send()
        if c.connected:
            try:
                c.poll(wait_ms)
            except MQTTConnectionError as exc:
                self._lost(exc.reason)
            self._send()
        elif wait_ms:
            left = self.retry_wait - ticks_diff(ticks_ms(), self.retry_from)
            sleep_ms(max(1, min(wait_ms, left)))
        for name, detail in self.meter.events():
            out("fw event %s %r" % (name, detail))
        if wait_ms:
            self.heap("idle")

    def loop(self, wl=None):
        """Passes until the workload is done and drained (F7); forever without a workload."""
        poll = self.cfg["poll_ms"]
        m = self.meter
        done = idle = False
        t0 = ticks_ms()
        while True:
            wait = poll
            if wl is not None and not done:
                w = wl.step(m, _now())
                if w < 0:
                    done = True
                    t0 = ticks_ms()
                    m.drain(_now())
                    self.heap("drain")
                else:
                    wait = min(w, poll)
                    self.heap("round")
            if done:
                wait = min(wait, 100)
            self.step(wait)
            if done:
                st = m.status()
                idle = not st["unacked"] and not st["unsealed"]
                if idle or ticks_diff(ticks_ms(), t0) >= self.cfg["drain_s"] * 1000:
                    break
        st = m.status()
        self.close()
        out("fw done served=%d ucny=%d seq=%d acked=%d unacked=%d unsealed=%d dropped=%d "
            "connects=%d journal_bytes=%d state_bytes=%d hwm=%d peak=%d"
            % (st["rounds"], st["ucny"], st["seq"], st["acked"], st["unacked"], st["unsealed"],
               self.dropped, self.connects, st["journal_bytes"], st["state_bytes"], self.hwm,
               self.peak))
        return 0 if idle else 3


def run(path, workload=None):
    """Load the configuration at path (ConfigError lists every problem), recover the meter,
    then loop (F2-F7) with the workload (a module or object; default: config "workload").
    Returns the exit status (F7)."""
    cfg = load(path)
    wl = workload
    name = cfg["workload"]
    if wl is None and name:
        __import__(name)
        wl = sys.modules[name]
    fw = Firmware(cfg, getattr(wl, "sync", None))
    gc.collect()
    fw.open()
    start = getattr(wl, "start", None)
    if start is not None:
        start(fw.meter, cfg["workload_args"])
    return fw.loop(wl)


def main(argv):
    if len(argv) != 1:
        sys.stderr.write("usage: micropython -m firmware_py.main CONFIG.json\n")
        return 2
    try:
        return run(argv[0])
    except ConfigError as exc:
        for p in exc.problems:
            sys.stderr.write("config error: %s\n" % p)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
