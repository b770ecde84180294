"""The device registry: ids, MQTT credentials, HMAC keys and their rotation, broker files.

Rules:
 D1. A device gets the next numeric id (or a given unused one), MQTT user name and client id
     "<ws>/<dev>", e.g. "7/1042" (docs/protocol.md, Topics), a random 24-byte password of which only the
     Mosquitto hash is kept, and key id 1 with a random 32-byte HMAC key. The password and key
     are shown once.
 D2. The password hash is Mosquitto's own format, `$7$<iterations>$<salt b64>$<hash b64>`
     (PBKDF2-HMAC-SHA512, 12-byte salt, 101 iterations as mosquitto_passwd writes), so the
     broker checks it with no plugin.
 D3. rotate_key() adds key id k+1 with a new random key. The old keys stay (late batches
     signed with them still verify); the rater delivers the new key to the device wrapped in a
     ROTATE command (firmware_py.proto W5) and switches to it when the device first uses it.
 D4. write_mosquitto_files(dir) rewrites <dir>/passwd and <dir>/acl: device lines for every
     device, other users' lines kept as they are (the roles log in on the private listener
     from passwd.services, deploy/mosquitto/README.md), lines of device user names
     no longer registered dropped (either form, "<ws>/<dev>" or the former "d<dev>"); the
     ACL is deploy/mosquitto/acl.example as shipped (cloud.mosquitto.render_acl): its two
     `pattern` lines on %u confine every device to em/<ws>/<dev>/, so it names no device and
     a registration changes only the password file. Both files are replaced atomically;
     send the broker SIGHUP to load them.
 D5. device_keys holds each key wrapped under the key-encryption key of cloud.keystore (kept
     outside the database: EDGEMETER_KEK_FILE / EDGEMETER_KEK); without one, in the clear.
     wrap_all() wraps the clear keys of an older store and rewraps keys after a KEK rotation.
"""
from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from edgemeter.cloud import keystore
from edgemeter.cloud import schema as S
from firmware_py import proto
from edgemeter.cloud.mosquitto import device_user, render_acl

PBKDF2_ITERATIONS = 101


class DeviceError(ValueError):
    """A caller mistake: unknown workspace or device, an id already taken."""


def username(ws: int, dev: int) -> str:
    """Rule D1: the MQTT user name and client id, "<ws>/<dev>" (cloud.mosquitto.device_user)."""
    return device_user(ws, dev)


def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Rule D2: the password-file value Mosquitto 2.x verifies (sha512-pbkdf2)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    dk = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return "$7$%d$%s$%s" % (iterations, base64.b64encode(salt).decode(), base64.b64encode(dk).decode())


def register(conn: Connection, ws_id: int, now: int, dev: int | None = None) -> dict[str, Any]:
    """Rule D1: {"id", "workspace", "username", "password", "kid", "key"} (key as bytes)."""
    if conn.execute(select(S.workspaces.c.id).where(S.workspaces.c.id == ws_id)).first() is None:
        raise DeviceError(f"no workspace {ws_id}")
    if dev is None:
        dev = conn.execute(select(func.coalesce(func.max(S.devices.c.id), 1000))).scalar_one() + 1
    elif type(dev) is not int or dev <= 0:
        raise DeviceError("a device id is a positive integer")
    password = secrets.token_urlsafe(24)
    key = secrets.token_bytes(proto.KEY_LEN)
    try:
        with conn.begin_nested():
            conn.execute(insert(S.devices).values(id=dev, workspace_id=ws_id, username=username(ws_id, dev),
                                                  password_hash=mosquitto_hash(password), kid=1, created_at=now))
    except IntegrityError:
        raise DeviceError(f"device id {dev} is taken") from None
    conn.execute(insert(S.device_keys).values(device_id=dev, kid=1, key=keystore.wrap(dev, 1, key), created_at=now))
    return {"id": dev, "workspace": ws_id, "username": username(ws_id, dev), "password": password, "kid": 1, "key": key}


def device(conn: Connection, dev: int) -> Any:
    row = conn.execute(select(S.devices).where(S.devices.c.id == dev)).mappings().first()
    if row is None:
        raise DeviceError(f"no device {dev}")
    return row


def keys(conn: Connection, dev: int) -> dict[int, bytes]:
    return {k: keystore.unwrap(dev, k, bytes(v)) for k, v in conn.execute(
        select(S.device_keys.c.kid, S.device_keys.c.key).where(S.device_keys.c.device_id == dev))}


def rotate_key(conn: Connection, dev: int, now: int) -> dict[str, Any]:
    """Rule D3: {"id", "kid", "key"} of the new key (the rater delivers it)."""
    device(conn, dev)
    kid = max(keys(conn, dev)) + 1
    key = secrets.token_bytes(proto.KEY_LEN)
    conn.execute(insert(S.device_keys).values(device_id=dev, kid=kid, key=keystore.wrap(dev, kid, key),
                                              created_at=now))
    conn.execute(S.devices.update().where(S.devices.c.id == dev).values(kid=kid))
    return {"id": dev, "kid": kid, "key": key}


def wrap_all(conn: Connection) -> dict[str, int]:
    """Rule D5 (cloud.keystore K3): wrap every key stored in clear or under an older KEK with
    the current KEK; returns {"wrapped": n, "keys": total}."""
    t = S.device_keys
    rows = conn.execute(select(t.c.device_id, t.c.kid, t.c.key)).all()
    n = 0
    for dev, kid, blob in rows:
        blob = bytes(blob)
        if keystore.needs_wrap(blob):
            key = keystore.unwrap(dev, kid, blob)
            conn.execute(t.update().where(t.c.device_id == dev, t.c.kid == kid).values(key=keystore.wrap(dev, kid, key)))
            n += 1
    return {"wrapped": n, "keys": len(rows)}


def _replace(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


def write_mosquitto_files(conn: Connection, directory: str | Path) -> dict[str, Any]:
    """Rule D4: rewrite <dir>/passwd and <dir>/acl from the registry; returns counts."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rows = conn.execute(select(S.devices.c.id, S.devices.c.workspace_id, S.devices.c.username,
                               S.devices.c.password_hash).order_by(S.devices.c.id)).all()
    names = {r.username for r in rows}
    kept = []
    pw = d / "passwd"
    if pw.exists():
        for line in pw.read_text().splitlines():
            user = line.split(":", 1)[0]
            if line.strip() and user not in names and not _is_device_user(user):
                kept.append(line)
    lines = kept + [f"{r.username}:{r.password_hash}" for r in rows]
    _replace(pw, "\n".join(lines) + "\n")
    _replace(d / "acl", render_acl(), 0o644)
    return {"passwd": str(pw), "acl": str(d / "acl"), "devices": len(rows), "other_users": len(kept)}


def _is_device_user(user: str) -> bool:
    """"<ws>/<dev>", or "d<dev>" as issued before the ACL became two pattern lines."""
    ws, slash, dev = user.partition("/")
    if slash:
        return ws.isdigit() and dev.isdigit()
    return len(user) > 1 and user[0] == "d" and user[1:].isdigit()
