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
 Known limit: a figure that sums several cells of one row (an invoice line's payment from
     several savings plans) is within one fen per cell, not one fen overall.
 F4. A cell that is exact (or zero) is never moved: zeros stay zero, whole fen stay as they are.
     So a column whose exact total is at most a whole amount (the CNY 10.00 trial, a plan's
     commitment) never displays more than that amount.
"""
from __future__ import annotations

from collections import deque

from firmware_py import billing

FEN = billing.FEN


def controlled(cells: list[list[int]], den: int) -> tuple[list[list[int]], int]:
    """(fen cells, grand total in fen) for exact cells[i][j] / den fen (non-negative ints).

    The grand total is round_fen of the exact total (F1); rows, columns and cells obey F2-F4.
    """
    if den <= 0 or any(v < 0 or type(v) is not int for row in cells for v in row):
        raise ValueError("controlled rounding takes non-negative integer cells and den > 0")
    ncols = len(cells[0]) if cells else 0
    if any(len(row) != ncols for row in cells):
        raise ValueError("controlled rounding takes a rectangular table")
    total = sum(sum(row) for row in cells)
    grand = billing.round_fen(total * FEN, den) // FEN
    out = [[v // den for v in row] for row in cells]
    need = grand - sum(sum(row) for row in out)
    if need:
        ups = _flow(cells, den, need)
        for i, j in ups:
            out[i][j] += 1
    return out, grand


def _bounds(values: list[int], den: int) -> tuple[int, int]:
    """(lo, hi): how many of these cells' fen may be rounded up so their sum stays within
    [floor, ceil] of its exact value."""
    frac = sum(v % den for v in values)
    return frac // den, -(-frac // den)


def _flow(cells: list[list[int]], den: int, need: int) -> list[tuple[int, int]]:
    """The cells to round up (F2, F3): a min-cost flow of value `need`.

    Nodes: 0 source, 1 sink, rows, columns. A row's (column's) lower bound is an edge of cost
    -BIG, its optional extra unit an edge of cost 0, so a minimum-cost flow meets every lower
    bound (a feasible flow meeting them exists, F2); a cell with remainder r is an edge of
    capacity 1 and cost -r (F3).
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
        edge(0, 2 + i, lo, -big)
        edge(0, 2 + i, hi - lo, 0)
    for j in range(nc):
        lo, hi = _bounds([row[j] for row in cells], den)
        edge(2 + nr + j, 1, lo, -big)
        edge(2 + nr + j, 1, hi - lo, 0)
    cell_edge = {}
    for i, row in enumerate(cells):
        for j, v in enumerate(row):
            if v % den:
                cell_edge[(i, j)] = edge(2 + i, 2 + nr + j, 1, -(v % den))
    for _ in range(need):
        if not _augment(graph, edges, len(graph)):
            raise ArithmeticError("controlled rounding found no feasible flow (a bug: F2 says one exists)")
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
