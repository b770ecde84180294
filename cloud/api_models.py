"""The HTTP API's response models (pydantic): what each route answers, as the OpenAPI document
shows it. Money is integer µCNY (`*_ucny`) or fen (`*_fen`), on invoices also CNY with two decimals
(`*_cny`); times are Unix seconds unless `_ms`."""


from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class Page(Model, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class Me(Model):
    role: Literal["operator", "tenant"]
    account_id: int | None
    token_id: int | None


class Trial(Model):
    amount_ucny: int
    claimed_at: int
    ends_at: int
    left_ucny: int


class SavingsPlan(Model):
    id: int
    commit_ucny: int
    bp: int = Field(description="discount in basis points: 9000 = x 0.90")
    cap_ucny: int = Field(description="list-price usage the plan covers")
    bought_at: int
    ends_at: int
    used_ucny: int
    forfeited_ucny: int
    left_ucny: int
    closed: bool


class Account(Model):
    id: int
    name: str
    created_at: int
    balance_ucny: int
    paid_ucny: int = Field(description="what the account paid: top-ups and purchases charged up front")
    payg_ucny: int
    purchases_ucny: int = Field(description="the price of every order (savings plans, licences)")
    trial_left_ucny: int
    suspended: bool
    workspaces: int


class Order(Model):
    id: int
    kind: Literal["savings-plan", "license"]
    ref: int = Field(description="the savings plan's or the licence purchase's id")
    price_ucny: int
    price_cny: str = Field(description="CNY with two decimals")
    paid_by: Literal["upfront", "balance"]
    at: int


class AccountDetail(Account):
    trial: Trial | None
    plans: list[SavingsPlan]
    orders: list[Order]


class Terms(Model):
    grant: int
    max: int
    validity_s: int
    offline_policy: str
    offline_units: int
    low_units: int
    renew_pct: int


class PoolLevels(Model):
    added: int
    free: int
    out: int
    unrec: int
    consumed: int
    overdraft: int
    remaining: int = Field(description="free + out + unrec: units not yet consumed")


class Workspace(Model):
    id: int
    account_id: int
    name: str
    billing: Literal["license", "postpaid"] | str
    created_at: int
    devices: int
    terms: Terms
    pool: PoolLevels | None


class Forecast(Model):
    window_s: int
    points: int
    burn_per_day: int | None = Field(description="least-squares burn rate, units per day")
    exhausted_at: int | None = Field(description="forecast exhaustion time (Unix s), none when not burning")
    remaining: int


class SeriesPoint(Model):
    at: int
    added: int
    consumed: int
    remaining: int


class PoolSummary(Model):
    workspace_id: int
    account_id: int
    name: str
    levels: PoolLevels
    terms: Terms
    forecast: Forecast


class PoolView(PoolSummary):
    series: list[SeriesPoint]


class Lease(Model):
    workspace_id: int
    id: int
    device_id: int
    state: str
    total: int
    allow: int
    used: int
    remaining: int
    extra: int
    booked: int
    validity_s: int
    seen: int
    opened_at: int


class Device(Model):
    id: int
    workspace_id: int
    account_id: int
    billing: str
    username: str
    status: str
    kid: int
    created_at: int
    last_seen: int
    online: bool
    acked_seq: int
    reported_seq: int
    unsynced_batches: int
    batches: int
    rounds: int
    rated_ucny: int
    mismatches: int
    lease: Lease | None
    reported_remaining: int | None
    reported_used: int | None
    status_flags: int
    firmware: str = Field(description="the firmware version the device last reported (\"\" before its first report)")


class Purchase(Model):
    id: int
    workspace_id: int
    account_id: int
    tier: str
    devices: int
    price_ucny: int
    purchased_at: int
    activate_by: int
    addon: bool
    activated: int
    unactivated: int


class Activation(Model):
    id: int
    purchase_id: int
    workspace_id: int
    account_id: int
    device_id: int | None
    count: int
    activated_at: int
    period_end: int
    units: int
    active: bool
    days_left: int


class UsageItem(Model):
    item: int
    name: str
    multiplier: int
    calls: int
    ucny: int


class UsageDevice(Model):
    device_id: int
    workspace_id: int
    account_id: int
    batches: int
    rounds: int
    rated_ucny: int
    device_ucny: int
    first_t0: int
    last_t0: int


class UsageBucket(Model):
    start: int
    item: int
    name: str
    calls: int
    ucny: int


CNY2 = "CNY with two decimals, as displayed (columns add up: cloud.invoices I3)"
EXACT = "exact µCNY as a decimal string (a discount can leave up to four decimals of a µCNY)"


class InvoiceLine(Model):
    item: int
    name: str
    multiplier: int
    book_version: int = Field(description="the price book that rated these calls")
    unit_ucny: int = Field(description="that book's price per call times the multiplier, µCNY")
    calls: int
    list_fen: int
    discount_fen: int
    trial_fen: int
    plan_fen: int
    due_fen: int
    list_cny: str = Field(description=CNY2)
    discount_cny: str = Field(description=CNY2)
    trial_cny: str = Field(description=CNY2)
    plan_cny: str = Field(description=CNY2)
    due_cny: str = Field(description=CNY2)
    list_ucny: int = Field(description="exact list-price amount, µCNY")
    trial_ucny: int = Field(description="exact amount the free trial covered, µCNY")
    payg_ucny: int = Field(description="exact pay-as-you-go amount, µCNY")
    plan_ucny: str = Field(description=EXACT)
    discount_ucny: str = Field(description=EXACT)


class Forfeit(Model):
    kind: str
    ref: int
    list_ucny: int
    bp: int
    cny: str = Field(description="the forfeited value, CNY with two decimals (nothing is owed)")


class KindTotal(Model):
    kind: str
    ref: int
    list_ucny: int
    amount_fen: int


class PlanTotal(Model):
    plan: int
    list_ucny: int = Field(description="list-price usage the plan covered this month, µCNY")
    paid_fen: int
    paid_cny: str = Field(description=CNY2)


class StatementPurchase(Model):
    order: int
    kind: Literal["savings-plan", "license"]
    ref: int
    at: int
    paid_by: Literal["upfront", "balance"]
    price_ucny: int
    price_fen: int
    price_cny: str = Field(description=CNY2)


class Invoice(Model):
    account_id: int
    month: str
    from_: int = Field(alias="from")
    to: int
    lines: list[InvoiceLine]
    list_fen: int
    discount_fen: int
    trial_fen: int
    plan_fen: int
    due_fen: int
    list_cny: str = Field(description=CNY2)
    discount_cny: str = Field(description=CNY2)
    trial_cny: str = Field(description=CNY2)
    plan_cny: str = Field(description=CNY2)
    due_cny: str = Field(description=CNY2)
    list_ucny: int = Field(description="exact list-price total, µCNY")
    plans: list[PlanTotal]
    purchases: list[StatementPurchase] = Field(description="orders of the month, on the statement beside the usage")
    purchases_fen: int
    purchases_cny: str = Field(description=CNY2)
    forfeits: list[Forfeit]
    by_kind: list[KindTotal]


class StoredInvoice(Model):
    id: int
    account_id: int
    month: str
    created_at: int
    list_fen: int
    due_fen: int


class InvoiceIndex(Model):
    account_id: int
    months: list[str]
    stored: list[StoredInvoice]


class Alert(Model):
    kind: str
    severity: Literal["warning", "critical"]
    account_id: int
    workspace_id: int | None
    device_id: int | None
    subject: str
    message: str
    value: int
    threshold: int
    at: int


class DeadLetter(Model):
    id: int
    reason: str
    topic: str
    detail: str
    count: int
    first_seen_ms: int
    last_seen_ms: int
    digest: str
    size: int


class Mismatch(Model):
    id: int
    batch_id: int
    device_id: int
    device_ucny: int
    rated_ucny: int
    difference_ucny: int
    reason: str
    at_ms: int
    seq: int
    workspace_id: int
    account_id: int
    t0: int
    book_version: int
    lease_id: int


class Overview(Model):
    accounts: int
    workspaces: int
    devices: int
    online: int
    silent: int
    unsynced_batches: int
    batches: int
    rounds: int
    rated_ucny: int
    mismatches: int
    dead_letters: int | None
    alerts: int
    critical_alerts: int
    now: int
    online_s: int


class Problem(Model):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no token, or an unknown or revoked one"},
    403: {"model": Problem, "description": "an operator token is required"},
    404: {"model": Problem, "description": "no such object, or not the tenant's"},
}
