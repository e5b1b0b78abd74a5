"""Result tables: the tidy columnar ``Results`` an experiment's ``run`` returns, and its builders.

A table maps column names to 1-D NumPy arrays of equal length, one row per algorithm x seed x sample
size (or round) x setting; ``experiments.engine.storage`` writes it as ``results.csv``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["Results", "SummaryError", "as_results", "concat_tables", "tidy"]


class SummaryError(RuntimeError):
    """The results and figures were written but the summary could not be computed (the reason is in the
    manifest's ``summary_error``)."""

    @classmethod
    def after_write(cls, csv_path: Any, n_figures: int, reason: str) -> "SummaryError":
        """The one-line error of a run (or merge) whose files are written and whose summary failed."""
        return cls(f"{csv_path}, manifest.json and {n_figures} figure file(s) were written, but the summary could "
                   f"not be computed ({reason}); it is left empty in the manifest")


class Results:
    """A tidy columnar table (column -> 1-D array, all of equal length) and scalar summaries.

    ``summary`` is a mapping or a function of no arguments that returns one. An experiment passes the function
    (``Results(table, lambda: summarize(out, config))``) so that the engine can write ``results.csv`` before any
    statistic is computed (``experiments.engine.cli``): a summary that fails then never loses the table
    (``safe_summary``; issue 14). ``summary`` the attribute is the computed mapping (computed once).
    """

    def __init__(self, table: Mapping[str, Any], summary: Mapping[str, Any] | Callable[[], Mapping[str, Any]]
                 | None = None):
        table = {str(k): np.asarray(v) for k, v in table.items()}
        if not table:
            raise ValueError("Results.table is empty: an experiment must return at least one column.")
        lengths = {k: v.shape for k, v in table.items()}
        bad = {k: s for k, s in lengths.items() if len(s) != 1}
        if bad:
            raise ValueError(f"Results.table columns must be 1-D arrays; got shapes {bad}.")
        if len({s[0] for s in lengths.values()}) != 1:
            raise ValueError(f"Results.table columns must have equal lengths; got {lengths}.")
        self.table = table
        self._summarize = summary if callable(summary) else None
        self._summary = None if callable(summary) else _scalars(summary or {})

    @property
    def summary(self) -> dict[str, Any]:
        if self._summary is None:
            self._summary = _scalars(self._summarize())
        return self._summary

    def safe_summary(self) -> tuple[dict[str, Any], str | None]:
        """``(summary, None)``, or ``({}, "ExceptionType: message")`` when computing it fails."""
        try:
            return self.summary, None
        except Exception as err:   # any failure: the table is already safe, the reason goes to the manifest
            return {}, f"{type(err).__name__}: {err}"

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.table.values())))


def _scalars(summary: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in dict(summary).items():
        if np.ndim(v) != 0:
            raise ValueError(f"Results.summary[{k!r}] must be a scalar, got shape {np.shape(v)}.")
        out[str(k)] = np.asarray(v).item()
    return out


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
