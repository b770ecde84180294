"""`edgemeter dashboard`: serve the HTTP API and the dashboard over a ledger with uvicorn.

    edgemeter dashboard --db URL --port P [--host 127.0.0.1] [--token T ...] [--tenant-token ACCOUNT=T ...]
                        [--online-s 300]

--db defaults to EDGEMETER_DB. Tokens: any token created by `edgemeter admin create-token`
works; --token adds an operator token and --tenant-token a tenant token for one account that
live only as long as this process (cloud.tokens T4). The dashboard is at http://HOST:P/ and
takes its token from the address (http://HOST:P/#token=T) or a sign-in field; it keeps the
token in the tab's session storage and sends it as `Authorization: Bearer`.
The store must exist at the newest schema (`edgemeter admin migrate` makes it; cloud.db rule 3).
Exit status: 0 after a clean shutdown (SIGINT/SIGTERM); 2 on a bad argument or database URL;
1 when the store is missing or unreachable or the port cannot be bound. Errors are one line.
"""
from __future__ import annotations

import argparse
import signal
import socket
import sys

from edgemeter.cloud import cliargs, db


def _parser() -> argparse.ArgumentParser:
    ap = cliargs.Parser(prog="edgemeter dashboard", description=__doc__.split("\n")[0])
    ap.add_argument("--db", type=cliargs.db_url, default=db.default_url(), required=db.default_url() is None,
                    help="database URL")
    ap.add_argument("--port", type=cliargs.listen_port, default=8080, help="TCP port, 0 .. 65535 (0: any free port)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--token", action="append", default=[], help="an operator token accepted by this process")
    ap.add_argument("--tenant-token", action="append", default=[], metavar="ACCOUNT=TOKEN",
                    help="a tenant token for one account accepted by this process")
    ap.add_argument("--online-s", type=cliargs.int_in(1, cliargs.MAX_VALIDITY_S, "a number of seconds"), default=300,
                    help="a device seen within this many seconds is online (1 .. 31,622,400)")
    ap.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    return ap


def parse_tokens(operator: list[str], tenant: list[str]) -> dict[str, int | None]:
    """{token: None (operator) | account id (tenant)}; ValueError naming a malformed entry."""
    out: dict[str, int | None] = {}
    for t in operator:
        if len(t) < 16:
            raise ValueError("a --token must be at least 16 characters")
        out[t] = None
    for spec in tenant:
        acc, sep, t = spec.partition("=")
        if not sep or not acc.isdigit() or int(acc) < 1 or len(t) < 16:
            raise ValueError(f"--tenant-token {spec!r}: expected ACCOUNT=TOKEN (token of 16+ characters)")
        out[t] = int(acc)
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    import uvicorn

    from edgemeter.cloud.api import create_app

    try:
        static = parse_tokens(args.token, args.tenant_token)
        app = create_app(args.db, static, online_s=args.online_s)
    except (ValueError, db.StoreError) as e:   # db.StoreURLError is a ValueError
        return cliargs.fail("dashboard", e)
    try:
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
        sock.listen(1024)
    except OSError as e:
        print(f"edgemeter dashboard: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        app.state.engine.dispose()
        return 1
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"edgemeter dashboard: serving http://{host}:{port}/ over {db.redact(args.db)}", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=3, access_log=False)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal with the handler
    # it found installed: these make that re-raise end main() normally, so the exit status is 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        app.state.engine.dispose()
    return 0
