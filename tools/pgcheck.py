"""Exit 0 when the PostgreSQL named by EDGEMETER_PG_URL (default the local `test` database) answers."""
import os
import sys

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def pg_url() -> str:
    return os.environ.get("EDGEMETER_PG_URL", DEFAULT_PG_URL)


def reachable(url: str | None = None) -> str | None:
    """None when the server answers, else the reason it does not."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - dev install always has it
        return f"psycopg not installed: {exc}"
    try:
        with psycopg.connect(url or pg_url(), connect_timeout=3) as conn:
            conn.execute("select 1")
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable", with its text
        return f"{type(exc).__name__}: {exc}".strip()
    return None


if __name__ == "__main__":
    why = reachable()
    if why:
        print(why, file=sys.stderr)
    sys.exit(1 if why else 0)
