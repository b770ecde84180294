"""A watchdog parent for a long-running shell process (the rater): it runs the real work in a
child and turns the child's death by a signal into a logged, clean exit.

Why: SQLite maps its WAL index (`-shm`) into memory, as it must for several processes sharing a
ledger. A fault on that mapping (the file truncated or its file system full or gone) raises
SIGBUS inside SQLite's C code; no Python handler can recover from it (the faulting access would
repeat), so a process that hits it dies by the signal. The parent outlives it and says so.

Rules:
 W1. On Linux, supervised() runs the same command in a child process (the environment
     variable CHILD marks it) and returns the exit status the parent should exit with; it
     returns None in the child, or where children cannot be bound to their parent (not Linux),
     so the caller runs the work itself.
 W2. The child dies with its parent (prctl PR_SET_PDEATHSIG = SIGKILL): `kill -9` of the
     parent stops the work at once, as it would without the watchdog, and never leaves an
     orphan consuming from the broker.
 W3. SIGTERM and SIGINT to the parent are passed on to the child as SIGTERM (its graceful
     stop); the parent then exits with the child's status.
 W4. A child ended by a signal (SIGBUS, SIGSEGV, SIGKILL from the OOM killer...) is logged as
     one error line naming the signal, and the parent exits with FAULT_STATUS (3, the rater's
     status for a store that failed while running). What the child had not committed it had
     not acknowledged, so the broker still holds it for the next rater.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys

CHILD = "EDGEMETER_SUPERVISED_CHILD"
FAULT_STATUS = 3
_PR_SET_PDEATHSIG = 1


def _bind_to_parent(parent: int) -> None:
    """In the child, before exec (W2): die with the parent; exit if it is already gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
        os._exit(FAULT_STATUS)


def supervised(module: str, argv: list[str], log: logging.Logger, what: str) -> int | None:
    """W1-W4: run `python -m module argv...` as a watched child; None in the child itself."""
    if os.environ.get(CHILD) or not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    child = subprocess.Popen([sys.executable, "-m", module, *argv], env={**os.environ, CHILD: "1"},
                             preexec_fn=lambda: _bind_to_parent(parent))

    def forward(*_: object) -> None:   # W3
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = child.wait()
    if status >= 0:
        return status
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    log.error(f"{what} process ended by {name}: a memory fault on the ledger's shared-memory index "
              "(-shm) if SIGBUS; stopped, nothing it had not committed was acknowledged",
              extra={"fields": {"signal": name, "pid": child.pid}})
    return FAULT_STATUS
