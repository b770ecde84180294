"""The command line's shared edge: one-line argument errors, bounded values, ports and URLs.

Every `edgemeter` subcommand parses with `Parser` and types its flags with the checks here, so
that a bad argument is one line naming the flag, the value and what is allowed, with exit
status 2, before anything reaches the store or the network:

    edgemeter admin top-up: argument --cny: a CNY amount must be from 0.000001 to 1,000,000,000,
    got '9999999999999' (`edgemeter admin top-up --help` lists the arguments)        [one line]

Bounds (the table in cloud/README.md, Admin; the --help text of each flag shows its range). The store keeps
money as integer µCNY and every id, count and unit in 64-bit signed integers (PostgreSQL
BIGINT, SQLite INTEGER); each bound leaves room for many times its value in one sum:
  B1. Ids (accounts, workspaces, devices, purchases, tokens): 1 .. 2**63 - 1.
  B2. One amount of money (a top-up, a savings-plan commitment): CNY 0.000001 .. 1,000,000,000
      (10**15 µCNY; the int64 store holds over 9,000 of them in one balance).
  B3. Licences in one purchase or activation: 1 .. 10,000,000 (the price book's minimum purchase,
      100, is a billing rule checked by firmware_py.billing L1; a standard purchase of the maximum
      costs CNY 100,000,000 and adds 10**14 pool units).
  B4. Lease terms in pool units (grant, max, offline allowance, low): 0 .. 10**15; validity
      1 s .. 366 days; renew at 0 .. 100 %.
  B5. Names: 1 .. 200 characters (accounts, workspaces), token notes at most 64, payment
      references at most 128: the widths of their columns, which PostgreSQL enforces and SQLite
      does not.
  B6. TCP ports 0 .. 65535 where 0 means any free port (listening), 1 .. 65535 where we connect.
  B7. The simulator and the demo (SIM_TYPES): 2 .. 100,000 devices, 1 .. 1,000,000,000 rounds,
      1 .. 32 raters, 0 .. 64 MicroPython processes, a duration of at most 10**9 s and a rate
      of at most 1,000 rounds/s per device.

`fail(cmd, exc)` is the one place that turns an exception a command did not handle into a line
and an exit status (tools.cli calls it for every subcommand): 2 for a ValueError (caller
mistakes raise ValueError throughout edgemeter), 1 otherwise (a failed operation: the store, the
network, a file); an exception of a kind no layer should let out is named as unexpected.
EDGEMETER_DEBUG=1 shows the traceback instead.
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from typing import Any, Callable
from urllib.parse import urlparse

MAX_ID = 2**63 - 1
UCNY_PER_CNY = 1_000_000
MAX_UCNY = 10**15
MAX_LICENCES = 10_000_000
MAX_UNITS = 10**15
MAX_VALIDITY_S = 366 * 86400


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`PROG: MESSAGE (PROG --help ...)`, exit 2).

    types: {dest: argparse type}, one table per command: every flag added later (sub-parsers
    included) whose dest is in it, has no choices and no type or a plain int or float, gets
    that type and the type's range in its help ("(1 .. 10,000,000)"), so that a subcommand
    added later is bounded like the others without repeating the check."""

    def __init__(self, *args: Any, types: dict[str, Callable[[str], Any]] | None = None, **kw: Any) -> None:
        self.types = dict(types or {})   # before super(): argparse adds --help in __init__
        super().__init__(*args, **kw)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (`{self.prog} --help` lists the arguments)\n")

    def add_subparsers(self, **kw: Any) -> Any:
        kw.setdefault("parser_class", functools.partial(Parser, types=self.types))
        return super().add_subparsers(**kw)

    def add_argument(self, *args: Any, **kw: Any) -> argparse.Action:
        action = super().add_argument(*args, **kw)
        t = self.types.get(action.dest)
        if t is not None and not action.choices and action.type in (None, int, float) and action.nargs != 0:
            action.type = t
            rng = getattr(t, "range", "")
            if rng and action.help is not argparse.SUPPRESS:
                action.help = f"{action.help} ({rng})" if action.help else rng
        return action


def _group(n: int) -> str:
    return f"{n:,}" if abs(n) >= 10_000 else str(n)


def int_in(lo: int, hi: int, what: str = "an integer") -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi] (B1-B4, B6, B7)."""
    def parse(text: str) -> int:
        try:
            v = int(text.strip().replace("_", ""), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} from {_group(lo)} to {_group(hi)}, "
                                             f"got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be from {_group(lo)} to {_group(hi)}, got {text!r}")
        return v
    parse.__name__ = what
    parse.range = f"{_group(lo)} .. {_group(hi)}"   # type: ignore[attr-defined]
    return parse


def float_in(lo: float, hi: float, what: str = "a number", lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [lo, hi] (or (lo, hi] with lo_open)."""
    bounds = f"{'above' if lo_open else 'at least'} {lo:g} and at most {hi:g}"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = float("nan")
        if not (v > lo if lo_open else v >= lo) or not v <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be {bounds}, got {text!r}")
        return v
    parse.__name__ = what
    parse.range = bounds   # type: ignore[attr-defined]
    return parse


def text_in(lo: int, hi: int, what: str = "a text") -> Callable[[str], str]:
    """An argparse type: a text of lo..hi characters (the store's column width)."""
    def parse(text: str) -> str:
        if not lo <= len(text) <= hi:
            raise argparse.ArgumentTypeError(f"{what} is {lo} to {hi} characters, got {len(text)}")
        return text
    parse.__name__ = what
    parse.range = f"{lo} .. {hi} characters"   # type: ignore[attr-defined]
    return parse


ident = int_in(1, MAX_ID, "an id")
licences = int_in(1, MAX_LICENCES, "a licence count")
units = int_in(0, MAX_UNITS, "a number of pool units")
listen_port = int_in(0, 65535, "a TCP port (0: any free port)")
port = int_in(1, 65535, "a TCP port")


def parse_cny(text: str) -> int:
    """Exact µCNY of a decimal CNY amount ('100', '0.05', '12.345678'); ValueError otherwise."""
    m = re.fullmatch(r"([+-]?)(\d+)(?:\.(\d{1,6}))?", text.strip(), re.ASCII)
    if not m:
        raise ValueError(f"not a CNY amount with at most 6 decimals: {text!r}")
    v = int(m.group(2)) * UCNY_PER_CNY + int((m.group(3) or "").ljust(6, "0"))
    return -v if m.group(1) == "-" else v


def cny(text: str) -> int:
    """An argparse type: a positive CNY amount of at most B2, as integer µCNY."""
    try:
        v = parse_cny(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not 1 <= v <= MAX_UCNY:
        raise argparse.ArgumentTypeError(f"a CNY amount must be from 0.000001 to {MAX_UCNY // UCNY_PER_CNY:,}, "
                                         f"got {text!r}")
    return v


cny.__name__ = "CNY amount"
cny.range = f"CNY 0.000001 .. {MAX_UCNY // UCNY_PER_CNY:,}"   # type: ignore[attr-defined]


def broker_url(text: str) -> str:
    """An argparse type: mqtt://[USER[:PASS]@]HOST[:PORT] or mqtts://... with a port in range, or
    amqp[s]://[USER[:PASS]@]HOST:PORT[,HOST:PORT...] (a RabbitMQ cluster, cloud.amqp)."""
    if text.startswith(("amqp://", "amqps://")):
        from edgemeter.cloud.amqp import parse_url
        try:
            nodes = parse_url(text)[0]
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if any(not 0 < p < 65536 for _, p in nodes):
            raise argparse.ArgumentTypeError(f"broker URL {text!r}: a port is out of 1-65535")
        return text
    try:
        u = urlparse(text)
        p = u.port
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"broker URL {text!r}: {e}") from None
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname or p == 0:
        raise argparse.ArgumentTypeError(f"expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (port 1-65535), "
                                         f"got {text!r}")
    return text


broker_url.__name__ = "broker URL"


def in_file(text: str) -> str:
    """An argparse type: a file that exists and can be read now."""
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {text}: "
                                         + ("no such file" if not os.path.exists(text) else "not a readable file"))
    return text


in_file.__name__ = "input file"


def out_file(text: str) -> str:
    """An argparse type: a file to write later, in a directory that exists now (so a long run
    does not end by failing to save its result)."""
    path = os.path.abspath(text)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    if not os.path.isdir(os.path.dirname(path)):
        raise argparse.ArgumentTypeError(f"cannot write {text}: directory {os.path.dirname(path)} does not exist")
    return text


out_file.__name__ = "output file"


def db_url(text: str) -> str:
    """An argparse type: a database URL the store serves (cloud.db.normalize_url), not opened."""
    from edgemeter.cloud import db   # SQLAlchemy is imported only by commands that take --db

    try:
        db.sqlite_path(text)
    except db.StoreURLError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


db_url.__name__ = "database URL"


def cny_text(text: str) -> str:
    """An argparse type: `cny` checked (B2), the text kept for the command to convert."""
    cny(text)
    return text.strip()


cny_text.__name__ = "CNY amount"
cny_text.range = cny.range   # type: ignore[attr-defined]


def iso_time(text: str) -> str:
    """An argparse type: a time firmware_py.civil.parse_iso reads, the text kept."""
    from firmware_py import civil

    try:
        t = civil.parse_iso(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e} (expected YYYY-MM-DD[THH:MM[:SS]][+HH:MM])") from None
    if t < 0:
        raise argparse.ArgumentTypeError(f"a time from 1970-01-01T00:00Z on, got {text!r}")
    return text


iso_time.__name__ = "time"


def sim_broker(text: str) -> str:
    """An argparse type: `mosquitto`, `rabbitmq` (brokers the simulator starts) or a broker URL."""
    if text in ("mosquitto", "rabbitmq"):
        return text
    try:
        return broker_url(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"expected mosquitto, rabbitmq or a broker URL: {e}") from None


sim_broker.__name__ = "broker"


# B7: the flags `edgemeter sim` and `edgemeter demo` share, by dest.
SIM_TYPES: dict[str, Callable[[str], Any]] = {
    "devices": int_in(2, 100_000, "a device count"), "rounds": int_in(1, 10**9, "a round count"),
    "duration": float_in(0, 1e9, "a duration in seconds", lo_open=True),
    "rate": float_in(0, 1000, "a rate in rounds/s per device", lo_open=True),
    "micropython": int_in(0, 64, "a process count"), "mp_rounds": int_in(1, 10**6, "a round count"),
    "raters": int_in(1, 32, "a rater count"), "seed": int_in(0, MAX_ID, "a seed"),
    "lease_validity": int_in(1, MAX_VALIDITY_S, "a validity in seconds"),
    "drain_timeout": float_in(0, 86400, "a number of seconds", lo_open=True),
    "broker_nodes": int_in(1, 9, "a node count"),
    "port": listen_port, "db": db_url, "broker": sim_broker, "report": out_file}


def fail(cmd: str, exc: BaseException) -> int:
    """Print `edgemeter CMD: what went wrong` for an exception and return its exit status."""
    if os.environ.get("EDGEMETER_DEBUG"):
        raise exc
    if isinstance(exc, KeyboardInterrupt):
        print(f"edgemeter {cmd}: interrupted", file=sys.stderr)
        return 130
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror}"
    if not isinstance(exc, (ValueError, OSError, RuntimeError)):
        text = f"unexpected {type(exc).__name__}: {text} (EDGEMETER_DEBUG=1 shows where)"
    print(f"edgemeter {cmd}: {text}", file=sys.stderr)
    return 2 if isinstance(exc, ValueError) else 1
