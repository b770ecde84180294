"""The ledger schema (SQLAlchemy Core), one for SQLite and PostgreSQL; Alembic migrations create it.

Money is integer µCNY; pool units are µCNY of rated list-price usage (contracts §3). Times are
integer Unix seconds (`*_at`) except the rater's receive/booking stamps, which are Unix
milliseconds (`*_ms`) so that ingest lag can be measured.

Two kinds of table:

  immutable entries (INSERT only, never UPDATE or DELETE):
    usage_batches, usage_lines, pool_entries, account_entries, payments, license_purchases,
    license_activations, savings_plans, trials, mismatches, device_keys, price_books,
    invoice_lines (an invoice is replaced whole, never edited)
  projections (derived; `edgemeter admin rebuild` recomputes them from the entries):
    pools              <- pool_entries grouped by workspace
    leases.used/returned/reclaimed/reconciled/state  <- pool_entries grouped by lease
    account_balances   <- payments, trials, account_entries
    plan_balances      <- savings_plans, account_entries
    devices.acked_seq  <- usage_batches (highest seq with every seq from 1 up to it booked)

Pool buckets (all µCNY units; one pool per License workspace). Every pool entry moves units
between buckets with signed deltas, so at every instant
    free + leased + used + unreconciled + expired == granted + overdraft
where `granted` is everything activations brought in and `overdraft` is usage a device reported
beyond what its lease covered (tampering or skew; it never comes out of `free`).
"""
from __future__ import annotations

from sqlalchemy import (BigInteger, Boolean, Column, ForeignKey, Index, Integer, LargeBinary, MetaData,
                        String, Table, Text, UniqueConstraint)

# SQLite only auto-assigns INTEGER PRIMARY KEY (the rowid alias); PostgreSQL gets BIGINT identity.
ID = BigInteger().with_variant(Integer(), "sqlite")
INT = BigInteger

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)


def _pk() -> Column:
    return Column("id", ID, primary_key=True, autoincrement=True)


accounts = Table(
    "accounts", metadata, _pk(),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", INT, nullable=False),
    # postpaid state: 'active' or 'suspended' (balance could not cover usage)
    Column("status", String(16), nullable=False, server_default="active"),
    Column("status_at", INT, nullable=False, server_default="0"),
)

workspaces = Table(
    "workspaces", metadata, _pk(),
    Column("account_id", ID, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    # 'license' (devices lease from the workspace pool) or 'postpaid' (the account pays per use)
    Column("billing", String(16), nullable=False),
    # offline policy carried in every grant: 'stop' | 'continue' (up to offline_units) | 'degrade'
    Column("offline_policy", String(16), nullable=False, server_default="stop"),
    Column("offline_units", INT, nullable=False, server_default="0"),
    Column("lease_units", INT, nullable=False, server_default="1000000"),   # default slice size
    Column("lease_validity_s", INT, nullable=False, server_default="86400"),
    Column("created_at", INT, nullable=False),
    UniqueConstraint("account_id", "name", name="uq_workspaces_account_name"),
)

price_books = Table(
    "price_books", metadata,
    Column("version", INT, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
    Column("cbor", LargeBinary, nullable=False),
    Column("created_at", INT, nullable=False),
)

devices = Table(
    "devices", metadata,
    Column("id", INT, primary_key=True, autoincrement=False),   # assigned by admin register-device
    Column("workspace_id", ID, ForeignKey("workspaces.id"), nullable=False, index=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(256), nullable=False),       # Mosquitto PBKDF2-SHA512 line value
    Column("kid", Integer, nullable=False),
    # The device's 32-byte HMAC key. Stored here for the rater; in production it lives in a KMS
    # and the store holds only a wrapped copy (see cloud/README.md).
    Column("key", LargeBinary(32), nullable=False),
    Column("status", String(16), nullable=False, server_default="active"),   # active | suspended
    Column("created_at", INT, nullable=False),
    Column("last_seen_ms", INT, nullable=False, server_default="0"),
    Column("acked_seq", INT, nullable=False, server_default="0"),    # projection (rule above)
    Column("boot", INT, nullable=False, server_default="0"),
    Column("grant_no", INT, nullable=False, server_default="0"),     # last grant number issued
)

device_keys = Table(
    "device_keys", metadata,
    Column("device_id", INT, ForeignKey("devices.id"), primary_key=True),
    Column("kid", Integer, primary_key=True),
    Column("key", LargeBinary(32), nullable=False),
    Column("created_at", INT, nullable=False),
)

license_purchases = Table(
    "license_purchases", metadata, _pk(),
    Column("workspace_id", ID, ForeignKey("workspaces.id"), nullable=False, index=True),
    Column("tier", String(16), nullable=False),
    Column("devices", INT, nullable=False),
    Column("price_ucny", INT, nullable=False),
    Column("purchased_at", INT, nullable=False),
    Column("addon", Boolean, nullable=False, server_default="0"),   # an add-on to an existing pool
)

license_activations = Table(
    "license_activations", metadata, _pk(),
    Column("purchase_id", ID, ForeignKey("license_purchases.id"), nullable=False, index=True),
    Column("workspace_id", ID, ForeignKey("workspaces.id"), nullable=False, index=True),
    Column("device_id", INT, nullable=True),       # the device the licence is bound to, if any
    Column("count", INT, nullable=False),          # licences activated by this row
    Column("activated_at", INT, nullable=False),
    Column("period_end", INT, nullable=False),
    Column("units", INT, nullable=False),          # pool units granted in
)

leases = Table(
    "leases", metadata, _pk(),
    Column("device_id", INT, ForeignKey("devices.id"), nullable=False, index=True),
    Column("workspace_id", ID, ForeignKey("workspaces.id"), nullable=False, index=True),
    Column("grant_no", INT, nullable=False),
    Column("units", INT, nullable=False),
    Column("granted_at", INT, nullable=False),
    Column("valid_until", INT, nullable=False),
    Column("final", Boolean, nullable=False, server_default="0"),
    # projections of pool_entries for this lease:
    Column("used", INT, nullable=False, server_default="0"),
    Column("returned", INT, nullable=False, server_default="0"),
    Column("reclaimed", INT, nullable=False, server_default="0"),
    Column("reconciled", INT, nullable=False, server_default="0"),
    Column("state", String(16), nullable=False, server_default="active"),  # active|returned|reclaimed|closed
    UniqueConstraint("device_id", "grant_no", name="uq_leases_device_grant"),
)

pools = Table(   # projection of pool_entries
    "pools", metadata,
    Column("workspace_id", ID, ForeignKey("workspaces.id"), primary_key=True),
    Column("granted", INT, nullable=False, server_default="0"),
    Column("free", INT, nullable=False, server_default="0"),
    Column("leased", INT, nullable=False, server_default="0"),
    Column("used", INT, nullable=False, server_default="0"),
    Column("unreconciled", INT, nullable=False, server_default="0"),
    Column("expired", INT, nullable=False, server_default="0"),
    Column("overdraft", INT, nullable=False, server_default="0"),
)

POOL_BUCKETS = ("granted", "free", "leased", "used", "unreconciled", "expired", "overdraft")

pool_entries = Table(
    "pool_entries", metadata, _pk(),
    Column("workspace_id", ID, ForeignKey("workspaces.id"), nullable=False),
    Column("at", INT, nullable=False),
    # grant_in | expire | lease_grant | lease_usage | lease_return | reclaim | reconcile
    Column("kind", String(16), nullable=False),
    Column("d_granted", INT, nullable=False, server_default="0"),
    Column("d_free", INT, nullable=False, server_default="0"),
    Column("d_leased", INT, nullable=False, server_default="0"),
    Column("d_used", INT, nullable=False, server_default="0"),
    Column("d_unreconciled", INT, nullable=False, server_default="0"),
    Column("d_expired", INT, nullable=False, server_default="0"),
    Column("d_overdraft", INT, nullable=False, server_default="0"),
    Column("lease_id", ID, ForeignKey("leases.id"), nullable=True, index=True),
    Column("activation_id", ID, ForeignKey("license_activations.id"), nullable=True),
    Column("batch_id", ID, nullable=True),
    Index("ix_pool_entries_ws_at", "workspace_id", "at"),
)

usage_batches = Table(
    "usage_batches", metadata, _pk(),
    Column("device_id", INT, ForeignKey("devices.id"), nullable=False),
    Column("seq", INT, nullable=False),
    Column("boot", INT, nullable=False),
    Column("book_version", INT, nullable=False),
    Column("lease_id", INT, nullable=False),          # 0: postpaid, no lease
    Column("t0", INT, nullable=False),                # device time of the first round
    Column("rounds", Integer, nullable=False),
    Column("device_ucny", INT, nullable=False),       # the device's own deduction
    Column("rated_ucny", INT, nullable=False),        # the cloud's re-rating with the core
    Column("mismatch", Boolean, nullable=False),
    Column("payload", LargeBinary, nullable=False),   # the signed message exactly as received
    Column("workspace_id", ID, nullable=False),
    Column("account_id", ID, nullable=False),
    Column("received_ms", INT, nullable=False),
    Column("booked_ms", INT, nullable=False),
    UniqueConstraint("device_id", "seq", name="uq_usage_batches_device_seq"),   # booked once, forever
    Index("ix_usage_batches_account_t0", "account_id", "t0"),
    Index("ix_usage_batches_workspace_t0", "workspace_id", "t0"),
)

usage_lines = Table(   # per batch, per (item, multiplier): for usage queries and invoices
    "usage_lines", metadata,
    Column("batch_id", ID, ForeignKey("usage_batches.id"), primary_key=True),
    Column("item", String(32), primary_key=True),
    Column("multiplier", Integer, primary_key=True),
    Column("calls", INT, nullable=False),
    Column("ucny", INT, nullable=False),
)

mismatches = Table(
    "mismatches", metadata, _pk(),
    Column("batch_id", ID, ForeignKey("usage_batches.id"), nullable=False, unique=True),
    Column("device_id", INT, nullable=False, index=True),
    Column("device_ucny", INT, nullable=False),
    Column("rated_ucny", INT, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("at_ms", INT, nullable=False),
)

dead_letters = Table(
    "dead_letters", metadata, _pk(),
    # malformed | bad_mac | replay | unknown_device | wrong_topic | oversized | invalid_round | ...
    Column("reason", String(32), nullable=False),
    Column("topic", String(256), nullable=False),
    Column("digest", LargeBinary(32), nullable=False),   # sha256 of the payload: counts repeats
    Column("payload", LargeBinary, nullable=False),      # truncated to 64 KiB
    Column("detail", Text, nullable=False, server_default=""),
    Column("count", INT, nullable=False, server_default="1"),
    Column("first_seen_ms", INT, nullable=False),
    Column("last_seen_ms", INT, nullable=False),
    UniqueConstraint("reason", "topic", "digest", name="uq_dead_letters_key"),
)

trials = Table(   # the one-time CNY 10 postpaid trial, per account
    "trials", metadata,
    Column("account_id", ID, ForeignKey("accounts.id"), primary_key=True),
    Column("amount_ucny", INT, nullable=False),
    Column("claimed_at", INT, nullable=False),
    Column("expires_at", INT, nullable=False),
)

savings_plans = Table(
    "savings_plans", metadata, _pk(),
    Column("account_id", ID, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("commitment_ucny", INT, nullable=False),
    Column("discount_pct", Integer, nullable=False),   # 95 means list price × 0.95
    Column("purchased_at", INT, nullable=False),
    Column("expires_at", INT, nullable=False),
)

payments = Table(   # top-ups of the pay-as-you-go balance
    "payments", metadata, _pk(),
    Column("account_id", ID, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("amount_ucny", INT, nullable=False),
    Column("at", INT, nullable=False),
    Column("ref", String(128), nullable=False, server_default=""),
)

account_entries = Table(   # postpaid charges: how each booked batch's list amount was paid
    "account_entries", metadata, _pk(),
    Column("account_id", ID, ForeignKey("accounts.id"), nullable=False),
    Column("batch_id", ID, nullable=True, unique=True),
    Column("at", INT, nullable=False),
    Column("kind", String(16), nullable=False),       # usage | forfeit
    Column("list_ucny", INT, nullable=False),         # list-price amount charged
    Column("trial_ucny", INT, nullable=False, server_default="0"),   # covered by the trial
    Column("plan_id", ID, nullable=True),
    Column("plan_list_ucny", INT, nullable=False, server_default="0"),   # list amount the plan offset
    Column("plan_ucny", INT, nullable=False, server_default="0"),        # plan balance consumed
    Column("paygo_ucny", INT, nullable=False, server_default="0"),       # charged to the balance
    Index("ix_account_entries_account_at", "account_id", "at"),
)

account_balances = Table(   # projection
    "account_balances", metadata,
    Column("account_id", ID, ForeignKey("accounts.id"), primary_key=True),
    Column("paid_ucny", INT, nullable=False, server_default="0"),
    Column("paygo_ucny", INT, nullable=False, server_default="0"),
    Column("balance_ucny", INT, nullable=False, server_default="0"),  # paid - paygo (may go < 0)
    Column("trial_used_ucny", INT, nullable=False, server_default="0"),
)

plan_balances = Table(   # projection
    "plan_balances", metadata,
    Column("plan_id", ID, ForeignKey("savings_plans.id"), primary_key=True),
    Column("used_ucny", INT, nullable=False, server_default="0"),
)

invoices = Table(
    "invoices", metadata, _pk(),
    Column("account_id", ID, ForeignKey("accounts.id"), nullable=False),
    Column("month", String(7), nullable=False),         # YYYY-MM (UTC)
    Column("created_at", INT, nullable=False),
    Column("list_fen", INT, nullable=False),
    Column("due_fen", INT, nullable=False),
    UniqueConstraint("account_id", "month", name="uq_invoices_account_month"),
)

invoice_lines = Table(
    "invoice_lines", metadata, _pk(),
    Column("invoice_id", ID, ForeignKey("invoices.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("item", String(32), nullable=False),
    Column("multiplier", Integer, nullable=False),
    Column("calls", INT, nullable=False),
    Column("list_ucny", INT, nullable=False),
    Column("discount_ucny", INT, nullable=False),
    Column("trial_ucny", INT, nullable=False),
    Column("plan_ucny", INT, nullable=False),
    Column("due_ucny", INT, nullable=False),
    Column("due_fen", INT, nullable=False),
)

alerts = Table(
    "alerts", metadata, _pk(),
    Column("kind", String(32), nullable=False),
    Column("subject", String(64), nullable=False),
    Column("detail", Text, nullable=False, server_default=""),
    Column("at", INT, nullable=False),
    Column("cleared_at", INT, nullable=True),
)

meta = Table(   # small key/value state (e.g. the active price-book version)
    "meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
