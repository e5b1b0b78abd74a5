"""Result tables: the tidy columnar ``Results`` an experiment's ``run`` returns, and its builders.

A table maps column names to 1-D NumPy arrays of equal length, one row per algorithm x seed x sample
size (or round) x setting; ``experiments.engine.storage`` writes it as ``results.csv``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

__all__ = ["Results", "as_results", "concat_tables", "tidy"]


@dataclass(frozen=True)
class Results:
    """A tidy columnar table (column -> 1-D array, all of equal length) and scalar summaries."""

    table: Mapping[str, np.ndarray]
    summary: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self):
        table = {str(k): np.asarray(v) for k, v in self.table.items()}
        if not table:
            raise ValueError("Results.table is empty: an experiment must return at least one column.")
        lengths = {k: v.shape for k, v in table.items()}
        bad = {k: s for k, s in lengths.items() if len(s) != 1}
        if bad:
            raise ValueError(f"Results.table columns must be 1-D arrays; got shapes {bad}.")
        if len({s[0] for s in lengths.values()}) != 1:
            raise ValueError(f"Results.table columns must have equal lengths; got {lengths}.")
        summary = {}
        for k, v in dict(self.summary).items():
            if np.ndim(v) != 0:
                raise ValueError(f"Results.summary[{k!r}] must be a scalar, got shape {np.shape(v)}.")
            v = np.asarray(v).item()
            summary[str(k)] = v
        object.__setattr__(self, "table", table)
        object.__setattr__(self, "summary", summary)

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.table.values())))


def as_results(value: Any) -> Results:
    """Accept what ``run`` returned: a ``Results`` or a bare table (dict of columns)."""
    if isinstance(value, Results):
        return value
    if isinstance(value, Mapping):
        return Results(value)
    raise TypeError(f"run() must return Results or a dict of columns, got {type(value).__name__}.")


def tidy(metrics: Mapping[str, Any], **axes: Any) -> dict[str, np.ndarray]:
    """Long-format table from arrays indexed by ``axes`` in order.

    ``tidy({"gap": g}, seed=s, algorithm=names, n=ns)`` needs ``g.shape == (len(s), len(names),
    len(ns))`` and gives one row per (seed, algorithm, n), with columns seed, algorithm, n, gap.
    """
    coords = {k: np.asarray(v) for k, v in axes.items()}
    shape = tuple(len(v) for v in coords.values())
    grids = np.meshgrid(*coords.values(), indexing="ij") if coords else []
    table = {k: g.reshape(-1) for k, g in zip(coords, grids)}
    for name, value in metrics.items():
        value = np.asarray(value)
        if value.shape != shape:
            raise ValueError(f"metric {name!r} has shape {value.shape}, expected {shape} from axes "
                             f"{', '.join(f'{k}[{n}]' for k, n in zip(coords, shape))}.")
        table[name] = value.reshape(-1)
    return table


def concat_tables(tables: list[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Stack tables with the same columns row-wise (e.g. one table per algorithm)."""
    if not tables:
        raise ValueError("concat_tables needs at least one table.")
    cols = list(tables[0])
    for t in tables[1:]:
        if list(t) != cols:
            raise ValueError(f"tables have different columns: {cols} vs {list(t)}.")
    return {c: np.concatenate([np.asarray(t[c]) for t in tables]) for c in cols}
