"""The ledger schema (SQLAlchemy Core), one for SQLite and PostgreSQL; Alembic migrations create it.

Money is integer µCNY; pool units are µCNY of rated list-price usage (docs/rating.md, Money and units). Times are
integer Unix seconds (`*_at`) except the rater's receive/booking stamps, which are Unix
milliseconds (`*_ms`) so that ingest lag can be measured.

Two kinds of table:

  immutable entries (INSERT only, never UPDATE or DELETE):
    usage_batches, usage_lines, pool_entries, account_entries, payments, license_purchases,
    license_activations, savings_plans, trials, mismatches, device_keys, price_books, orders
    (an invoice with its lines is replaced whole, never edited)
  projections (derived; `edgemeter admin rebuild` recomputes them from the entries):
    pools, leases      <- pool_entries replayed in order through firmware_py.pool.Pool (its P9)
    leases.booked      <- usage_batches.rated_ucny summed per lease
    account_balances   <- payments, orders, trials, account_entries
    plan_balances      <- account_entries per savings plan
    devices.acked_seq  <- usage_batches (highest seq with every seq from 1 up to it booked)

Pool buckets are the core's (firmware_py/pool.py P1): at every instant
    added + overdraft == free + out + unrec + consumed
where `added` is what activations brought in less what expired licences withdrew, `out` is
reserved by live leases, `unrec` was reclaimed from silent leases, and `overdraft` is use a
device reported beyond what its lease and the free units covered.
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
)

workspaces = Table(
    "workspaces", metadata, _pk(),
    Column("account_id", ID, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    # 'license' (devices lease from the workspace pool) or 'postpaid' (the account pays per use)
    Column("billing", String(16), nullable=False),
    # lease terms of the workspace pool (firmware_py.pool.TERMS; policy 0 stop, 1 continue, 2 degrade)
    Column("grant_units", INT, nullable=False, server_default="545000"),
    Column("max_units", INT, nullable=False, server_default="5450000"),
    Column("validity_s", INT, nullable=False, server_default="86400"),
    Column("offline_policy", Integer, nullable=False, server_default="1"),
    Column("offline_units", INT, nullable=False, server_default="54500"),
    Column("low_units", INT, nullable=False, server_default="1090000"),
    Column("renew_pct", Integer, nullable=False, server_default="20"),
    Column("created_at", INT, nullable=False),
    UniqueConstraint("account_id", "name", name="uq_workspaces_account_name"),
)

price_books = Table(
    "price_books", metadata,
    Column("version", INT, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
    Column("cbor", LargeBinary, nullable=False),
    Column("created_at", INT, nullable=False),
    # in force from this time (Unix s): raters rate and push it from then on (cloud.books B1-B6)
    Column("effective_at", INT, nullable=False, server_default="0"),
)

devices = Table(
    "devices", metadata,
    Column("id", INT, primary_key=True, autoincrement=False),   # assigned by admin register-device
    Column("workspace_id", ID, ForeignKey("workspaces.id"), nullable=False, index=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(256), nullable=False),       # Mosquitto $7$ PBKDF2-SHA512 value
    Column("kid", Integer, nullable=False),          # the newest key id issued (see device_keys)
    Column("kid_sent", Integer, nullable=False, server_default="1"),   # the newest one delivered
    Column("status", String(16), nullable=False, server_default="active"),   # active | suspended
    Column("created_at", INT, nullable=False),
    Column("last_seen_ms", INT, nullable=False, server_default="0"),
    Column("acked_seq", INT, nullable=False, server_default="0"),    # projection (rule above)
    # the cloud-side protocol session's persistent state (firmware_py.cloud_session), JSON
    Column("session", Text, nullable=False, server_default="{}"),
    Column("last_status", Text, nullable=False, server_default="{}"),   # the last STATUS report, JSON
    Column("firmware", String(64), nullable=False, server_default=""),   # the last FIRMWARE report
)

# Every 32-byte HMAC key a device has had, by key id (rotation adds one; the old ones stay so
# that late batches signed with them still verify). Stored here for the rater; in production
# the keys live in a KMS and this table holds wrapped copies (see cloud/README.md).
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
    Column("tier", Integer, nullable=False),          # price-book tier id
    Column("devices", INT, nullable=False),
    Column("price_ucny", INT, nullable=False),
    Column("purchased_at", INT, nullable=False),
    Column("activate_by", INT, nullable=False),
    Column("addon", Boolean, nullable=False, server_default="0"),   # joins an existing pool
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

pools = Table(   # projection of pool_entries: firmware_py.pool.Pool buckets
    "pools", metadata,
    Column("workspace_id", ID, ForeignKey("workspaces.id"), primary_key=True),
    Column("added", INT, nullable=False, server_default="0"),
    Column("free", INT, nullable=False, server_default="0"),
    Column("out", INT, nullable=False, server_default="0"),
    Column("unrec", INT, nullable=False, server_default="0"),
    Column("consumed", INT, nullable=False, server_default="0"),
    Column("overdraft", INT, nullable=False, server_default="0"),
    Column("next_lease", INT, nullable=False, server_default="1"),
    Column("entries", INT, nullable=False, server_default="0"),   # entries applied so far
)

POOL_BUCKETS = ("added", "free", "out", "unrec", "consumed", "overdraft")

leases = Table(   # projection of pool_entries: firmware_py.pool.Pool lease rows
    "leases", metadata,
    Column("workspace_id", ID, ForeignKey("workspaces.id"), primary_key=True),
    Column("id", INT, primary_key=True, autoincrement=False),   # lease id, per pool
    Column("device_id", INT, nullable=False, index=True),
    Column("state", Integer, nullable=False),        # pool.LIVE | RECLAIMED | CLOSED
    Column("total", INT, nullable=False),
    Column("allow", INT, nullable=False),
    Column("used", INT, nullable=False),
    Column("validity", INT, nullable=False),
    Column("seen", INT, nullable=False),
    Column("extra", INT, nullable=False, server_default="0"),   # use paid beyond the reservation
    Column("booked", INT, nullable=False, server_default="0"),  # rated units of batches booked on it
    Column("opened_at", INT, nullable=False),
)

pool_entries = Table(   # the core's pool entries, in application order per workspace
    "pool_entries", metadata, _pk(),
    Column("workspace_id", ID, ForeignKey("workspaces.id"), nullable=False),
    Column("at", INT, nullable=False),
    Column("op", Integer, nullable=False),            # pool.OP_*
    Column("lease_id", INT, nullable=True),
    Column("entry", Text, nullable=False),            # the entry's ints, comma-separated
    Column("activation_id", ID, ForeignKey("license_activations.id"), nullable=True),
    Column("batch_id", ID, nullable=True),
    Index("ix_pool_entries_ws_id", "workspace_id", "id"),
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
    Column("item", Integer, primary_key=True),       # price-book item id
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

trials = Table(   # the one-time CNY 10 postpaid trial, per account (firmware_py.billing P1)
    "trials", metadata,
    Column("account_id", ID, ForeignKey("accounts.id"), primary_key=True),
    Column("amount_ucny", INT, nullable=False),
    Column("claimed_at", INT, nullable=False),
    Column("ends_at", INT, nullable=False),
)

savings_plans = Table(   # firmware_py.billing P2
    "savings_plans", metadata, _pk(),
    Column("account_id", ID, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("commit_ucny", INT, nullable=False),
    Column("bp", Integer, nullable=False),           # discount in basis points: 9000 = x 0.90
    Column("cap_ucny", INT, nullable=False),         # list-price usage the plan covers
    Column("bought_at", INT, nullable=False),
    Column("ends_at", INT, nullable=False),
)

payments = Table(   # top-ups of the pay-as-you-go balance
    "payments", metadata, _pk(),
    Column("account_id", ID, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("amount_ucny", INT, nullable=False),
    Column("at", INT, nullable=False),
    Column("ref", String(128), nullable=False, server_default=""),
)

account_entries = Table(   # postpaid charges (firmware_py.billing P6): (kind, ref, list, bp)
    "account_entries", metadata, _pk(),
    Column("account_id", ID, ForeignKey("accounts.id"), nullable=False),
    Column("batch_id", ID, nullable=True, index=True),   # the booked batch that caused it
    Column("at", INT, nullable=False),                   # cloud booking time (Unix s)
    # trial | plan | payg | forfeit-trial | forfeit-plan
    Column("kind", String(16), nullable=False),
    Column("ref", INT, nullable=False, server_default="0"),   # savings plan id, else 0
    Column("list_ucny", INT, nullable=False),
    Column("bp", Integer, nullable=False),           # worth list_ucny * bp / 10000 µCNY exactly
    Index("ix_account_entries_account_at", "account_id", "at"),
)

orders = Table(   # purchases (firmware_py.billing P7): a savings plan or licences, paid once, no refunds
    "orders", metadata, _pk(),
    Column("account_id", ID, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("kind", String(16), nullable=False),       # savings-plan | license
    Column("ref", INT, nullable=False),               # savings_plans.id | license_purchases.id
    Column("price_ucny", INT, nullable=False),        # the commitment, or devices x tier price
    Column("paid_by", String(16), nullable=False),    # upfront (a charge outside the balance) | balance
    Column("at", INT, nullable=False),
    UniqueConstraint("kind", "ref", name="uq_orders_kind_ref"),
)

account_balances = Table(   # projection of payments, orders, trials, account_entries
    "account_balances", metadata,
    Column("account_id", ID, ForeignKey("accounts.id"), primary_key=True),
    Column("paid_ucny", INT, nullable=False, server_default="0"),      # top-ups + orders paid up front
    Column("payg_ucny", INT, nullable=False, server_default="0"),
    # top-ups - payg - orders paid from the balance (payg may take it below 0, an order may not)
    Column("balance_ucny", INT, nullable=False, server_default="0"),
    Column("purchases_ucny", INT, nullable=False, server_default="0"),  # every order's price
    Column("trial_left_ucny", INT, nullable=False, server_default="0"),
    Column("suspended", Boolean, nullable=False, server_default="0"),
)

plan_balances = Table(   # projection of account_entries per savings plan
    "plan_balances", metadata,
    Column("plan_id", ID, ForeignKey("savings_plans.id"), primary_key=True),
    Column("used_ucny", INT, nullable=False, server_default="0"),
    Column("forfeited_ucny", INT, nullable=False, server_default="0"),
    Column("closed", Boolean, nullable=False, server_default="0"),   # its rest was forfeited
)

invoices = Table(   # one per account and billing month; regenerated whole, never edited
    "invoices", metadata, _pk(),
    Column("account_id", ID, ForeignKey("accounts.id"), nullable=False),
    Column("month", String(7), nullable=False),         # YYYY-MM on the billing calendar (UTC+8)
    Column("created_at", INT, nullable=False),
    Column("list_fen", INT, nullable=False),
    Column("due_fen", INT, nullable=False),
    UniqueConstraint("account_id", "month", name="uq_invoices_account_month"),
)

invoice_lines = Table(   # one per billable item and multiplier; amounts rounded once (billing rule R)
    "invoice_lines", metadata, _pk(),
    Column("invoice_id", ID, ForeignKey("invoices.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("item", Integer, nullable=False),
    Column("name", String(64), nullable=False),
    Column("multiplier", Integer, nullable=False),
    Column("book_version", INT, nullable=False, server_default="1"),   # the price book that rated it
    Column("unit_ucny", INT, nullable=False, server_default="0"),      # that book's price x multiplier
    Column("calls", INT, nullable=False),
    Column("list_ucny", INT, nullable=False),      # exact list-price amount
    Column("list_fen", INT, nullable=False),
    Column("discount_fen", INT, nullable=False),   # savings-plan discount
    Column("trial_fen", INT, nullable=False),      # covered by the free trial
    Column("plan_fen", INT, nullable=False),       # paid from savings plans (discounted)
    Column("due_fen", INT, nullable=False),        # pay-as-you-go amount due
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

api_tokens = Table(   # HTTP API bearer tokens (cloud/tokens.py): only their SHA-256 is kept
    "api_tokens", metadata, _pk(),
    Column("hash", LargeBinary(32), nullable=False, unique=True),
    Column("role", String(16), nullable=False),                 # operator | tenant
    Column("account_id", ID, ForeignKey("accounts.id"), nullable=True, index=True),   # tenant's account
    Column("name", String(200), nullable=False, server_default=""),
    Column("created_at", INT, nullable=False),
    Column("revoked_at", INT, nullable=True),
)
