"""Device keys at rest: wrapped under a key-encryption key (KEK) kept outside the database.

The KEK ring comes from the environment of each cloud process (rater, admin, API), never from
the store:
    EDGEMETER_KEK_FILE=/etc/edgemeter/kek     one KEK a line: "<id> <64 hex digits>" (# comments)
    EDGEMETER_KEK="<id>:<64 hex>[,<id>:<64 hex>...]"   the same, for containers
Ids are 1..255; the first KEK is current (it wraps), the others only unwrap. The file should be
0600 and owned by the service user; in production it is where a KMS or HSM plugs in (the same
wrap/unwrap calls, the KEK never leaving it).

Rules:
 K1. wrap(dev, kid, key) = 0x01 || kek id || nonce(12) || AES-256-GCM(KEK, nonce, key,
     aad = "edgemeter device key" || dev (8 bytes) || kid (4 bytes)): the blob is bound to its
     row, so moving a wrapped key to another device or key id fails to unwrap.
 K2. unwrap() of a 32-byte value returns it as it is (a key stored in clear, as stores were
     before KEKs); any other value needs the ring and the KEK it names, else KeyStoreError
     naming what is missing. Unwrapped keys are memoised (bounded) per blob.
 K3. Rotation: put the new KEK first, keep the old ones, run `edgemeter admin wrap-keys` (it
     wraps clear keys and rewraps every key not under the current KEK, in one transaction),
     then remove the old lines. Without a ring, keys are stored in clear and the rater warns.

Errors: KeyStoreError(RuntimeError) for a missing or malformed ring or a blob that does not
unwrap.
"""
from __future__ import annotations

import os
import struct
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
AAD = b"edgemeter device key"
MEMO_MAX = 200_000

_ring: dict[str, Any] | None = None
_memo: dict[bytes, bytes] = {}


class KeyStoreError(RuntimeError):
    """The KEK ring is missing or malformed, or a wrapped key does not unwrap."""


def _parse(text: str, where: str) -> list[tuple[int, bytes]]:
    out = []
    for n, line in enumerate(text.replace(",", "\n").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        kid, _, hexkey = line.replace(":", " ").partition(" ")
        try:
            i, key = int(kid), bytes.fromhex(hexkey.strip())
        except ValueError:
            raise KeyStoreError(f"{where}: entry {n} is not '<id> <64 hex digits>'") from None
        if not 1 <= i <= 255 or len(key) != 32:
            raise KeyStoreError(f"{where}: entry {n} needs an id 1..255 and a 32-byte key")
        out.append((i, key))
    if not out:
        raise KeyStoreError(f"{where}: no KEK in it")
    return out


def ring() -> dict[str, Any] | None:
    """{"current": id, "keys": {id: AESGCM}} from the environment (cached), or None."""
    global _ring
    if _ring is None:
        path, inline = os.environ.get("EDGEMETER_KEK_FILE"), os.environ.get("EDGEMETER_KEK")
        if path:
            try:
                text = open(path).read()
            except OSError as e:
                raise KeyStoreError(f"EDGEMETER_KEK_FILE={path}: {e.strerror}") from None
            entries = _parse(text, f"EDGEMETER_KEK_FILE={path}")
        elif inline:
            entries = _parse(inline, "EDGEMETER_KEK")
        else:
            return None
        _ring = {"current": entries[0][0], "keys": {i: AESGCM(k) for i, k in entries}}
    return _ring


def reset() -> None:
    """Forget the cached ring and unwrapped keys (after the environment changed)."""
    global _ring
    _ring = None
    _memo.clear()


def _aad(dev: int, kid: int) -> bytes:
    return AAD + struct.pack(">QI", dev, kid)


def wrap(dev: int, kid: int, key: bytes) -> bytes:
    """K1 under the current KEK; the key itself when there is no ring (K3)."""
    r = ring()
    if r is None:
        return bytes(key)
    nonce = os.urandom(12)
    return bytes([VERSION, r["current"]]) + nonce + r["keys"][r["current"]].encrypt(nonce, bytes(key), _aad(dev, kid))


def unwrap(dev: int, kid: int, blob: bytes) -> bytes:
    """K2: the device key of a stored value."""
    if len(blob) == 32:
        return blob
    hit = _memo.get(blob)
    if hit is not None:
        return hit
    r = ring()
    if r is None:
        raise KeyStoreError(f"device {dev} key {kid} is wrapped: set EDGEMETER_KEK_FILE or EDGEMETER_KEK "
                            "to the key-encryption keys")
    if len(blob) != 2 + 12 + 48 or blob[0] != VERSION:
        raise KeyStoreError(f"device {dev} key {kid}: not a wrapped key (version {blob[:1].hex()})")
    aes = r["keys"].get(blob[1])
    if aes is None:
        raise KeyStoreError(f"device {dev} key {kid} is wrapped under KEK {blob[1]}, which the ring lacks")
    try:
        key = aes.decrypt(blob[2:14], blob[14:], _aad(dev, kid))
    except Exception:  # noqa: BLE001 - cryptography's InvalidTag: wrong KEK or a moved/altered blob
        raise KeyStoreError(f"device {dev} key {kid} does not unwrap under KEK {blob[1]}") from None
    if len(_memo) >= MEMO_MAX:
        _memo.clear()
    _memo[blob] = key
    return key


def needs_wrap(blob: bytes) -> bool:
    """K3: stored in clear, or under a KEK that is not the current one."""
    r = ring()
    if r is None:
        raise KeyStoreError("no KEK: set EDGEMETER_KEK_FILE or EDGEMETER_KEK")
    return len(blob) == 32 or blob[1] != r["current"]
