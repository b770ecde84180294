"""Controlled rounding of an invoice table to the fen: every cell, line and column adds up.

An invoice is a table of exact amounts: one row per line (billable item and multiplier), one
column per way the list price was settled (savings-plan discount, free trial, each savings
plan, pay-as-you-go). Its cells are exact rationals num / den fen; a row sums to the line's
exact list amount. Rounding each figure on its own makes the displayed columns drift from
their totals. Here instead (rules F1-F4):

 F1. The grand total (the invoice's list total) is rounded ONCE, by the core's
     billing.round_fen (half away from zero).
 F2. Every displayed cell, row sum and column sum is its exact value rounded down or up to the
     fen (never further off than one fen), and the displayed cells add up exactly: each row to
     its displayed line total, each column to its displayed column total, all of them to the
     grand total of F1. Such a rounding always exists (controlled rounding of a two-way table,
     Bacharach 1966; Cox 1987): it is a feasible integral flow, found here as a minimum-cost
     flow source -> rows -> cells -> columns -> sink.
 F3. Among the roundings of F2, the one chosen rounds up the cells with the largest
     remainders in total (largest remainder). It is deterministic: the same table, rows and
     columns in the same order, always gives the same rounding.
 F4. A cell that is exact (or zero) is never moved: zeros stay zero, whole fen stay as they are.
     So a column whose exact total is at most a whole amount (the CNY 10.00 trial, a plan's
     commitment) never displays more than that amount.
 F5. A displayed column total that several parties paid together (the savings-plan column, paid
     by each plan) is split among them by split(): each part is its exact value rounded down or
     up, the parts add up to the column total exactly, the largest remainders rounded up (ties:
     the earlier part), and F4 holds for each part.
 F6. A column may carry a cap in fen (controlled(caps=...)): its displayed total never exceeds
     it. Caps win over F1-F4: where a cap leaves no room, the grand total of F1 yields (to the
     other rounding, floor or ceiling); where a cap is below the column's exact floor, the
     column shows its cap, and where it is below even its cells' floors, fen are taken off
     those cells (smallest remainders first), their lines asking them back from their other
     cells within F2 and otherwise showing less, the grand total with them. Invoices cap a
     fund spent over several months (the trial, a plan) at what the fund's cumulative exact
     spending, rounded once at each month's end, leaves for the month, so the months'
     displayed amounts together never exceed the fund. One fund's cap is always its month's
     exact amount rounded down or up; only a column several funds paid together (the plan
     column, F5) can be capped below its floor, by less than a fen per fund: its funds' caps
     are rounded one by one.
"""
from __future__ import annotations

from collections import deque

from firmware_py import billing

FEN = billing.FEN


def controlled(cells: list[list[int]], den: int,
               caps: dict[int, int] | None = None) -> tuple[list[list[int]], int]:
    """(fen cells, grand total in fen) for exact cells[i][j] / den fen (non-negative ints).

    The grand total is round_fen of the exact total (F1); rows, columns and cells obey F2-F4;
    caps maps a column index to the most its displayed total may show, and wins over F1-F4
    where they conflict (F6).
    """
    if den <= 0 or any(v < 0 or type(v) is not int for row in cells for v in row):
        raise ValueError("controlled rounding takes non-negative integer cells and den > 0")
    ncols = len(cells[0]) if cells else 0
    if any(len(row) != ncols for row in cells):
        raise ValueError("controlled rounding takes a rectangular table")
    caps = caps or {}
    total = sum(sum(row) for row in cells)
    grand = billing.round_fen(total * FEN, den) // FEN
    out = [[v // den for v in row] for row in cells]
    for j, cap in caps.items():
        _lower_to_cap(cells, out, j, den, cap)
    floors = sum(sum(row) for row in out)
    room = sum(_col_hi(cells, out, j, den, caps) - sum(r[j] for r in out) for j in range(ncols))
    # F6: capped columns may force the grand total down to the floor, or below it
    grand = max(min(floors, total // den), min(grand, floors + room))
    ups = _flow(cells, out, den, grand - floors, caps) if grand > floors else []
    for i, j in ups:
        out[i][j] += 1
    return out, floors + len(ups)


def _lower_to_cap(cells: list[list[int]], out: list[list[int]], j: int, den: int, cap: int) -> None:
    """F6: where column j's cells' floors already exceed its cap, take the excess fen off its
    cells, those with the smallest remainders first (ties: the later line), a fen per cell per
    pass, so the column shows exactly its cap."""
    excess = sum(row[j] for row in out) - max(cap, 0)
    order = sorted(range(len(out)), key=lambda i: (cells[i][j] % den, -i))
    while excess > 0:
        for i in order:
            if excess and out[i][j]:
                out[i][j] -= 1
                excess -= 1

def _bounds(values: list[int], den: int) -> tuple[int, int]:
    """(lo, hi): how many of these cells' fen may be rounded up so their sum stays within
    [floor, ceil] of its exact value."""
    frac = sum(v % den for v in values)
    return frac // den, -(-frac // den)


def _col_hi(cells: list[list[int]], out: list[list[int]], j: int, den: int, caps: dict[int, int]) -> int:
    """The most column j may display: its exact total rounded up, or its cap (F6) when lower,
    down to what its cells show before rounding up (their floors, or less where _lower_to_cap
    took fen off them)."""
    _, hi = _bounds([row[j] for row in cells], den)
    base = sum(row[j] for row in out)
    return base + min(hi, max(0, caps[j] - base)) if j in caps else base + hi


def split_bounds(num: int, den: int, cap: int | None = None) -> tuple[int, int]:
    """(lo, hi) fen a part of exact num / den fen may show under F5: its floor, and its ceiling
    or its cap when lower (never below the floor)."""
    lo = num // den
    hi = lo + (1 if num % den else 0)
    return lo, hi if cap is None else max(lo, min(hi, cap))


def split(total: int, nums: list[int], den: int, caps: list[int | None] | None = None) -> list[int]:
    """F5: `total` fen split among parts of exact nums[k] / den fen, largest remainder first
    (ties: the earlier part), no part above caps[k] (None: no cap); ValueError if total is not
    between the parts' floors and their (capped) ceilings."""
    bounds = [split_bounds(v, den, c) for v, c in zip(nums, caps or [None] * len(nums))]
    out = [lo for lo, _ in bounds]
    need = total - sum(out)
    if not 0 <= need <= sum(hi - lo for lo, hi in bounds):
        raise ValueError(f"cannot split {total} fen among parts of {sum(out)} to "
                         f"{sum(hi for _, hi in bounds)} fen")
    order = sorted((k for k, (lo, hi) in enumerate(bounds) if hi > lo), key=lambda k: (-(nums[k] % den), k))
    for k in order[:need]:
        out[k] += 1
    return out


def _flow(cells: list[list[int]], out: list[list[int]], den: int, need: int,
          caps: dict[int, int]) -> list[tuple[int, int]]:
    """The cells to round up from `out` (F2, F3): a min-cost flow of value `need`, or less when
    caps leave no room for it (F6).

    Nodes: 0 source, 1 sink, rows, columns. A row's (column's) lower bound is an edge of cost
    -BIG, its optional extra unit an edge of cost 0, so a minimum-cost flow meets every lower
    bound it can (without caps one meeting them all exists, F2); a cell with remainder r is an
    edge of capacity 1 and cost -r (F3). A row whose cells _lower_to_cap took fen off asks for
    them back from its other cells, within their own bounds.
    """
    nr, nc = len(cells), len(cells[0])
    big = den * (nr * nc + 1)
    graph: list[list[int]] = [[] for _ in range(2 + nr + nc)]
    edges: list[list[int]] = []          # [to, cap, cost]; edge k ^ 1 is its reverse

    def edge(a: int, b: int, cap: int, cost: int) -> int:
        graph[a].append(len(edges))
        edges.append([b, cap, cost])
        graph[b].append(len(edges))
        edges.append([a, 0, -cost])
        return len(edges) - 2

    for i, row in enumerate(cells):
        lo, hi = _bounds(row, den)
        taken = sum(v // den for v in row) - sum(out[i])
        edge(0, 2 + i, lo + taken, -big)
        edge(0, 2 + i, hi - lo, 0)
    for j in range(nc):
        lo, _ = _bounds([row[j] for row in cells], den)
        hi = _col_hi(cells, out, j, den, caps) - sum(row[j] for row in out)
        lo = min(lo, hi)
        edge(2 + nr + j, 1, lo, -big)
        edge(2 + nr + j, 1, hi - lo, 0)
    cell_edge = {}
    for i, row in enumerate(cells):
        for j, v in enumerate(row):
            if v % den:
                cell_edge[(i, j)] = edge(2 + i, 2 + nr + j, 1, -(v % den))
    for _ in range(need):
        if not _augment(graph, edges, len(graph)):
            if not caps:
                raise ArithmeticError("controlled rounding found no feasible flow (a bug: F2 says one exists)")
            break
    return sorted(ij for ij, k in cell_edge.items() if edges[k][1] == 0)


def _augment(graph: list[list[int]], edges: list[list[int]], n: int) -> bool:
    """Push one unit along a cheapest source -> sink path (Bellman-Ford queue); False if none."""
    dist: list[float] = [float("inf")] * n
    via = [-1] * n
    dist[0] = 0
    queue, queued = deque([0]), [False] * n
    queued[0] = True
    while queue:
        a = queue.popleft()
        queued[a] = False
        for k in graph[a]:
            b, cap, cost = edges[k]
            if cap and dist[a] + cost < dist[b]:
                dist[b] = dist[a] + cost
                via[b] = k
                if not queued[b]:
                    queued[b] = True
                    queue.append(b)
    if via[1] < 0:
        return False
    b = 1
    while b != 0:
        k = via[b]
        edges[k][1] -= 1
        edges[k ^ 1][1] += 1
        b = edges[k ^ 1][0]
    return True
