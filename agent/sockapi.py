"""The agent's local Unix-socket API: newline-delimited JSON, one request and one response per
line, so that an SDK in any language can report rounds (the format, with examples, is in
agent/README.md).

Rules:
 K1. A request is one JSON object on one line (UTF-8, at most api.max_line bytes with its
     newline): {"op": OP, ...arguments, "id": any}. The response is one JSON object on one line,
     in request order, echoing "id" when given.
 K2. Business outcomes are answered with "ok": true and a "code"/"reason" (meter codes:
     "allowed": false with the refusal's reason for start, code 9 "unknown round" for a round
     that is not open). "ok": false means the request itself was wrong: "error" is one of
     bad_json, bad_request (unknown op, missing or mistyped argument), invalid (the price book
     refuses the component or round: "rule" names the rating rule), line_too_long (the
     connection is closed after it), internal; "message" says what and where.
 K3. Bad input changes nothing. A connection that closes with rounds open leaves them open:
     the same or another connection may record into and end them by id, or meter rule M6
     settles them after meter.round_timeout seconds.
 K4. The socket file is created with mode api.socket_mode (default 0660) in a directory the
     agent owns; a stale socket file from a previous run is replaced.
 K5. At most api.max_connections connections are served at once (one thread each); one more
     is answered {"ok": false, "error": "busy"} and closed at once.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import socketserver
import threading
from typing import Any

from firmware_py import rating
from firmware_py.meter import REASONS

from edgemeter.agent.api import Agent

log = logging.getLogger("edgemeter.agent")

OPS = ("start", "record", "end", "status", "leave_agent", "ping")
_RECORD_ARGS = ("round", "item", "count", "model", "image", "direct", "launch", "op", "id")


class BadRequest(ValueError):
    pass


def _int(req: dict, key: str, default: Any = None, required: bool = False) -> Any:
    v = req.get(key, default)
    if v is None and not required:
        return None
    if type(v) is not int or v < 0:
        raise BadRequest("%s: expected a non-negative integer, got %s" % (key, json.dumps(v)))
    return v


def handle(agent: Agent, req: Any) -> dict:
    """The response object of one decoded request (K2)."""
    if not isinstance(req, dict):
        raise BadRequest("a request is a JSON object")
    op = req.get("op")
    if op not in OPS:
        raise BadRequest("op: expected one of %s, got %s" % (", ".join(OPS), json.dumps(op)))
    if op == "ping":
        return {"ok": True}
    if op == "status":
        return {"ok": True, "status": agent.status()}
    if op == "start":
        s = agent.start_round(_int(req, "hint"))
        return {"ok": True, "allowed": s.allowed, "code": s.code, "reason": s.reason,
                "round": s.round_id}
    if op == "leave_agent":
        item = req.get("item")
        if item is not None and type(item) not in (str, int):
            raise BadRequest("item: expected a name or an id")
        agent.leave_agent(item)
        return {"ok": True}
    rid = _int(req, "round", required=True)
    if op == "end":
        e = agent.end_round(rid)
        return {"ok": True, "code": e.code, "reason": e.reason, "ucny": e.ucny}
    for k in req:
        if k not in _RECORD_ARGS:
            raise BadRequest("%s: unknown argument of record" % k)
    item = req.get("item")
    if not isinstance(item, (str, int)) or type(item) is bool:
        raise BadRequest("item: expected a price-book item name or id, got %s" % json.dumps(item))
    model = req.get("model")
    if model is not None and (type(model) not in (str, int) or type(model) is bool):
        raise BadRequest("model: expected a model name or id")
    image = req.get("image")
    if image is not None:
        if (not isinstance(image, list) or len(image) != 2
                or not all(type(x) is int and x > 0 for x in image)):
            raise BadRequest("image: expected [width, height]")
        image = (image[0], image[1])
    for k in ("direct", "launch"):
        if req.get(k) is not None and type(req[k]) is not bool:
            raise BadRequest("%s: expected true or false" % k)
    count = _int(req, "count", 1)
    code = agent.record(rid, item, count, model, image, bool(req.get("direct")), req.get("launch"))
    return {"ok": True, "code": code, "reason": REASONS[code]}


_LONG_INT = re.compile(rb'"([^"\\]{1,40})"\s*:\s*-?\d{21}')


def _parse_int(text: str) -> int:
    """K1: JSON integers of at most 20 digits (any uint64); longer ones are bad requests."""
    if len(text.lstrip("-")) > 20:
        raise BadRequest("an integer of %d digits: at most 20" % len(text.lstrip("-")))
    return int(text)


def _decode(line: bytes) -> Any:
    try:
        return json.loads(line, parse_int=_parse_int)
    except BadRequest as exc:
        m = _LONG_INT.search(line)
        raise BadRequest("%s: %s" % (m.group(1).decode("utf-8", "replace"), exc) if m else str(exc)) from None


def respond(agent: Agent, line: bytes) -> dict:
    """Decode, handle, and turn every failure into an error response (K2, K3)."""
    req: Any = None
    try:
        req = _decode(line)
        out = handle(agent, req)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        out = {"ok": False, "error": "bad_json", "message": str(exc)}
    except BadRequest as exc:
        out = {"ok": False, "error": "bad_request", "message": str(exc)}
    except rating.RatingError as exc:
        out = {"ok": False, "error": "invalid", "rule": exc.rule, "message": str(exc)}
    except ValueError as exc:  # PriceBookError and other caller mistakes of the meter
        out = {"ok": False, "error": "invalid", "rule": "unknown-item", "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one bad request must not end the agent
        log.exception("socket API request failed")
        out = {"ok": False, "error": "internal", "message": "%s: %s" % (type(exc).__name__, exc)}
    if isinstance(req, dict) and "id" in req:
        out["id"] = req["id"]
    return out


class _Handler(socketserver.StreamRequestHandler):
    server: "SocketAPI"

    def handle(self) -> None:
        limit = self.server.max_line
        while True:
            try:
                line = self.rfile.readline(limit + 1)
            except OSError:
                return
            if not line:
                return
            if len(line) > limit:
                self._send({"ok": False, "error": "line_too_long",
                            "message": "a request line is at most %d bytes" % limit})
                return
            if not line.strip():
                continue
            if not self._send(respond(self.server.agent, line)):
                return

    def _send(self, obj: dict) -> bool:
        try:
            self.wfile.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
            self.wfile.flush()
            return True
        except OSError:
            return False


class SocketAPI(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The socket server (K4); serve() runs it on a daemon thread, stop() ends it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, path: str, agent: Agent, mode: int = 0o660, max_line: int = 65536,
                 max_connections: int = 64) -> None:
        self.agent = agent
        self.max_line = max_line
        self.slots = threading.BoundedSemaphore(max_connections)   # K5
        self.path = path
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(path)
                probe.close()
                raise OSError("another agent is listening on %s" % path)
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)
            finally:
                probe.close()
        old = os.umask(0o777 & ~mode)
        try:
            super().__init__(path, _Handler)
        finally:
            os.umask(old)
        os.chmod(path, mode)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="edgemeter-sockapi", daemon=True)

    def process_request(self, request: Any, client_address: Any) -> None:
        """K5: a thread per connection while a slot is free; else "busy" and close."""
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(b'{"ok":false,"error":"busy","message":"too many connections"}\n')
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def serve(self) -> "SocketAPI":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
