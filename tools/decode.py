"""`edgemeter decode`: print a captured device/cloud payload readably.

    edgemeter decode [FILE | -] [--hex STRING] [--raw | --key HEX]

The payload comes from FILE, from `--hex` (whitespace and a leading 0x are ignored) or, with
neither (or FILE "-"), from standard input read as binary. `--raw` prints the CBOR item in
RFC 8949 section 8 diagnostic notation (firmware_py.cbor_diag). Without `--raw`, a
message-aware description is printed (firmware_py.proto_text.describe), and the diagnostic
notation for anything that is not a message. `--key HEX` (the device's
HMAC key) also checks a message's tag over the body bytes as received and says so.

Exit status: 0 printed; 1 the payload is not valid (the byte offset and the reason are printed,
never a traceback) or its MAC does not verify under --key; 2 usage or input trouble (bad hex,
unreadable file).
"""
from __future__ import annotations

import argparse
import binascii
import os
import sys

from edgemeter.cloud import cliargs
from firmware_py import cbor, cbor_diag, proto_text

MAX_BYTES = 1 << 20  # a captured MQTT payload; refuse absurd inputs before decoding


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; the protocol layer may add options (e.g. --key) to it."""
    ap = cliargs.Parser(prog="edgemeter decode",
                                 description="Print a captured device/cloud payload readably.")
    ap.add_argument("file", nargs="?", default=None,
                    help="payload file (binary); '-' or omitted reads standard input")
    ap.add_argument("--hex", metavar="STRING", help="the payload as hex instead of a file")
    ap.add_argument("--raw", action="store_true",
                    help="print any CBOR item of our subset in diagnostic notation (RFC 8949 s.8)")
    ap.add_argument("--key", metavar="HEX",
                    help="the device's HMAC key in hex: check the message's tag (not with --raw)")
    return ap


class InputError(Exception):
    """The payload could not be read (exit status 2)."""


def read_payload(args: argparse.Namespace) -> bytes:
    if args.hex is not None:
        if args.file is not None:
            raise InputError("give either FILE or --hex, not both")
        text = "".join(args.hex.split())
        if text[:2].lower() == "0x":
            text = text[2:]
        try:
            return binascii.unhexlify(text)
        except (binascii.Error, ValueError) as exc:
            raise InputError(f"--hex is not an even-length hex string ({exc})") from None
    try:
        if args.file is None or args.file == "-":
            return sys.stdin.buffer.read(MAX_BYTES + 1)
        with open(args.file, "rb") as f:
            return f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read {args.file or 'standard input'}: {exc.strerror or exc}") from None


def render(payload: bytes, raw: bool = False, key: bytes | None = None) -> str:
    """The text to print for payload; CBORError (or the protocol's ValueError) when invalid."""
    obj = cbor.loads(payload, max_bytes=MAX_BYTES)
    return cbor_diag.notation(obj) if raw else proto_text.describe(obj, key)


def read_key(text: str) -> bytes:
    try:
        key = binascii.unhexlify("".join(text.split()))
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"--key is not an even-length hex string ({exc})") from None
    if not key:
        raise InputError("--key is empty")
    return key


def mac_fails(payload: bytes, key: bytes) -> bool:
    """True when payload is a signed envelope whose tag does not verify under key."""
    from firmware_py import proto
    try:
        _, body, tag = proto.unseal(payload)
    except ValueError:
        return False
    return not proto.verify(key, body, tag)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    key = None
    try:
        if args.key is not None:
            if args.raw:
                raise InputError("--key checks a message's MAC; it has no meaning with --raw")
            key = read_key(args.key)
        payload = read_payload(args)
        text = render(payload, raw=args.raw, key=key)
    except InputError as exc:
        print(f"edgemeter decode: {exc}", file=sys.stderr)
        return 2
    except cbor.CBORError as exc:
        print(f"edgemeter decode: invalid payload ({len(payload)} bytes) at byte offset "
              f"{exc.offset}: {exc.reason}", file=sys.stderr)
        return 1
    except ValueError as exc:  # the protocol layer's own errors (e.g. a malformed message)
        print(f"edgemeter decode: invalid message: {exc}", file=sys.stderr)
        return 1
    try:
        print(text, flush=True)
    except BrokenPipeError:   # `edgemeter decode F | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if key is not None and mac_fails(payload, key):
        print("edgemeter decode: the MAC does not verify under the given key", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
