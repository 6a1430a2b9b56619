"""A linear (integer) program as arrays: the form highspy's `Highs.passModel` takes, built without a
per-variable Python object. Models are written block by block with `RowsBuilder` (each call adds
many rows at once from NumPy arrays) and solved by `parallel.planner.solvers`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INF = float("inf")


@dataclass(frozen=True)
class LinearModel:
    """minimise cost @ x  s.t.  row_lower <= A x <= row_upper,  col_lower <= x <= col_upper,
    x[j] integer where integer[j]. A is row-wise CSR (start, index, value)."""

    cost: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    integer: np.ndarray  # bool per column
    row_lower: np.ndarray
    row_upper: np.ndarray
    start: np.ndarray  # int32, num_rows + 1
    index: np.ndarray  # int32
    value: np.ndarray  # float64

    @property
    def num_cols(self) -> int:
        return len(self.cost)

    @property
    def num_rows(self) -> int:
        return len(self.row_lower)

    def row_activity(self, x: np.ndarray) -> np.ndarray:
        """A @ x, row by row."""
        products = self.value * np.asarray(x, dtype=np.float64)[self.index]
        sums = np.add.reduceat(products, self.start[:-1]) if len(products) else np.zeros(self.num_rows)
        empty = self.start[:-1] == self.start[1:]
        return np.where(empty, 0.0, sums) if len(products) else sums

    def is_feasible(self, x: np.ndarray, tol: float = 1e-6) -> bool:
        x = np.asarray(x, dtype=np.float64)
        if len(x) != self.num_cols:
            return False
        if np.any(x < self.col_lower - tol) or np.any(x > self.col_upper + tol):
            return False
        if np.any(np.abs(x[self.integer] - np.round(x[self.integer])) > tol):
            return False
        activity = self.row_activity(x)
        scale = np.maximum(1.0, np.abs(activity))
        return bool(np.all(activity >= self.row_lower - tol * scale) and np.all(activity <= self.row_upper + tol * scale))


class ColumnsBuilder:
    """Hands out column index ranges and records each column's cost, bounds and integrality."""

    def __init__(self):
        self._cost, self._lower, self._upper, self._integer = [], [], [], []
        self.count = 0

    def add(self, count: int, *, cost=0.0, lower=0.0, upper=INF, integer=False) -> np.ndarray:
        cols = np.arange(self.count, self.count + count, dtype=np.int64)
        self._cost.append(np.broadcast_to(np.asarray(cost, dtype=np.float64), (count,)))
        self._lower.append(np.broadcast_to(np.asarray(lower, dtype=np.float64), (count,)))
        self._upper.append(np.broadcast_to(np.asarray(upper, dtype=np.float64), (count,)))
        self._integer.append(np.broadcast_to(np.asarray(integer, dtype=bool), (count,)))
        self.count += count
        return cols

    def arrays(self):
        def cat(parts, dtype):
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
        return (cat(self._cost, np.float64), cat(self._lower, np.float64), cat(self._upper, np.float64),
                cat(self._integer, bool))


class RowsBuilder:
    """Collects rows as (row, column, value) triplets, many at a time, and compresses them to CSR."""

    def __init__(self):
        self._rows, self._cols, self._vals, self._lower, self._upper = [], [], [], [], []
        self.count = 0

    def add(self, count: int, lower, upper) -> np.ndarray:
        """Open `count` rows with these bounds; returns their indices (fill them with `entries`)."""
        rows = np.arange(self.count, self.count + count, dtype=np.int64)
        self._lower.append(np.broadcast_to(np.asarray(lower, dtype=np.float64), (count,)))
        self._upper.append(np.broadcast_to(np.asarray(upper, dtype=np.float64), (count,)))
        self.count += count
        return rows

    def entries(self, rows, cols, values) -> None:
        rows, cols = np.broadcast_arrays(np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))
        self._rows.append(rows.ravel())
        self._cols.append(cols.ravel())
        self._vals.append(np.broadcast_to(np.asarray(values, dtype=np.float64), rows.shape).ravel())

    def model(self, columns: ColumnsBuilder) -> LinearModel:
        cost, col_lower, col_upper, integer = columns.arrays()
        rows = np.concatenate(self._rows) if self._rows else np.zeros(0, dtype=np.int64)
        cols = np.concatenate(self._cols) if self._cols else np.zeros(0, dtype=np.int64)
        vals = np.concatenate(self._vals) if self._vals else np.zeros(0)
        order = np.lexsort((cols, rows))
        rows, cols, vals = rows[order], cols[order], vals[order]
        start = np.zeros(self.count + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=self.count), out=start[1:])
        lower = np.concatenate(self._lower) if self._lower else np.zeros(0)
        upper = np.concatenate(self._upper) if self._upper else np.zeros(0)
        return LinearModel(cost, col_lower, col_upper, integer, lower.astype(np.float64), upper.astype(np.float64),
                           start.astype(np.int32), cols.astype(np.int32), vals)
