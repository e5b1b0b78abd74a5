"""``rlhf-bandits run NAME --sweep FIELD=V1,V2,... [--sweep ...]``: a grid of configs as one run.

The grid is the Cartesian product of the sweeps in the order given (the last field varies fastest). Each
point is the base config with the point's values, validated like ``--set``, and runs the experiment's own
``run``; the run's table stacks the points' tables with one column per swept field (its short name), the
summary keys each point's entries by the point (``kl_coef=0.1/...``) and the figures of each point go to
``OUT/NAME/<point>/``.

Compiled once: a float field is *traced*. Every ``run_vectorized`` call whose function is
``functools.partial(f, ..., config=config)`` (as the built-in experiments write them) gets the point's
values of the float fields as one more argument and a config that holds them (``traced_call``), so all
points share one compiled program per call. Where the function needs such a field as a concrete number
(a shape, a Python ``if``), tracing it fails and that call compiles once per point, as separate runs
would; the manifest's ``sweep.traced_calls`` says which calls were shared. Integer, string and boolean
fields (sizes, modes) are never traced. Results equal separate ``--set`` runs to the last bits (a traced
number is not constant-folded by XLA).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import typing
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments.engine.registry import UsageError

__all__ = ["Point", "Traced", "parse_sweeps", "plot_grid", "points", "run_grid", "traced_call", "traced_paths",
           "with_values"]


class Traced(NamedTuple):
    """The float fields of the current grid point, set on ``Progress.traced`` while the point runs."""

    paths: tuple[str, ...]
    values: tuple[float, ...]


class Point(NamedTuple):
    overrides: tuple[str, ...]    # ``path=text`` for apply_overrides
    label: str                    # ``short=text,...``: its summary prefix and figure folder
    columns: dict                 # ``{short name: value}`` for the table


def _field_type(config: Any, path: str) -> Any:
    node, tp = config, None
    for part in path.split("."):
        hints = typing.get_type_hints(type(node))
        tp, node = hints[part], getattr(node, part)
    return tp


def parse_sweeps(texts: Sequence[str], config: Any) -> list[tuple[str, str, list[str], Any]]:
    """``[(dotted path, short name, value texts, type)]`` of ``--sweep FIELD=V1,V2,...`` (one line per error)."""
    from experiments.engine.config import _resolve, settable_fields

    out, seen = [], set()
    allowed = settable_fields(config)
    for text in texts:
        field, sep, values = text.partition("=")
        items = [v.strip() for v in values.split(",")] if sep else []
        if not field or not sep or not values.strip() or any(not v for v in items):
            raise UsageError(f"sweep={text!r} is not allowed: write FIELD=V1,V2,... (e.g. kl_coef=0.05,0.1,0.2).")
        try:
            path = _resolve(field.strip(), config)
        except ValueError as err:
            raise UsageError(f"sweep {field!r}: {err}") from None
        if path not in allowed:
            raise UsageError(f"sweep field {field!r} is not a field of {type(config).__name__} (allowed: "
                             f"{', '.join(allowed)}).")
        tp = _field_type(config, path)
        if typing.get_origin(tp) is tuple or tp is tuple:
            raise UsageError(f"sweep field {field!r} is a tuple: --sweep takes fields of one number or word each "
                             "(set a tuple with --set).")
        if path in seen:
            raise UsageError(f"sweep field {field!r} is given twice: give each field once with all its values.")
        if len(set(items)) != len(items):
            raise UsageError(f"sweep={text!r} is not allowed: a value is repeated.")
        seen.add(path)
        out.append((path, path.rsplit(".", 1)[-1], items, tp))
    return out


def points(config: Any, sweeps: list[tuple[str, str, list[str], Any]]) -> list[tuple[Point, Any]]:
    """``[(point, its config)]`` over the grid, each config validated (``apply_overrides``: one line on a
    bad value, naming the point)."""
    from experiments.engine.config import apply_overrides, field_value

    out = []
    for combo in itertools.product(*[[(path, short, v) for v in values] for path, short, values, _ in sweeps]):
        overrides = tuple(f"{path}={v}" for path, _, v in combo)
        label = ",".join(f"{short}={v}" for _, short, v in combo)
        try:
            point_config = apply_overrides(config, overrides)
        except ValueError as err:
            raise UsageError(f"sweep point {label}: {err}") from None
        columns = {short: field_value(point_config, path) for path, short, _ in combo}
        out.append((Point(overrides, label, columns), point_config))
    return out


def traced_paths(sweeps: list[tuple[str, str, list[str], Any]]) -> tuple[str, ...]:
    """The swept fields that are traced: the float ones (module docstring)."""
    return tuple(path for path, _, _, tp in sweeps if tp is float)


def with_values(config: Any, paths: Sequence[str], values: Sequence[Any]) -> Any:
    """A copy of frozen dataclass ``config`` with ``values`` at the dotted ``paths``, *without* running its
    checks (the values may be tracers; each point's config was checked with its concrete values)."""
    out = copy.copy(config)
    for path, value in zip(paths, values):
        head, _, rest = path.partition(".")
        if head not in {f.name for f in dataclasses.fields(out)}:
            raise AttributeError(f"{type(out).__name__} has no field {head!r}")
        object.__setattr__(out, head, with_values(getattr(out, head), [rest], [value]) if rest else value)
    return out


def _traced_body(func: Callable, bound: tuple, keywords: tuple, template: Any, paths: tuple, key, *rest):
    *args, values = rest
    config = with_values(template, paths, [values[i] for i in range(len(paths))])
    return func(*bound, key, *args, config=config, **dict(keywords))


def traced_call(fn: Callable, keys: jax.Array, args: tuple, traced: Traced | None):
    """``(fn, args, shared)``: with ``traced`` and a ``functools.partial(f, ..., config=config)`` that traces
    with the float fields as arguments, a function shared by every point (the template config holds 0.0
    in those fields, so the runner's executable cache sees one program) and ``args`` plus the values;
    otherwise ``fn`` and ``args`` unchanged."""
    if traced is None or not isinstance(fn, functools.partial):
        return fn, args, False
    config = fn.keywords.get("config")
    if not dataclasses.is_dataclass(config) or not traced.paths:
        return fn, args, False
    try:
        template = with_values(config, traced.paths, [0.0] * len(traced.paths))
    except AttributeError:   # a call whose config is not the experiment's
        return fn, args, False
    keywords = tuple(sorted((k, v) for k, v in fn.keywords.items() if k != "config"))
    shared = functools.partial(_traced_body, fn.func, fn.args, keywords, template, traced.paths)
    values = jnp.asarray(np.asarray(traced.values, np.float64), dtype=jnp.result_type(float))
    try:
        jax.eval_shape(jax.vmap(shared, in_axes=(0,) + (None,) * (len(args) + 1)), keys[:1], *args, values)
    except Exception:   # a field used as a concrete number; the per-point call raises any real error again
        return fn, args, False
    return shared, (*args, values), True


def run_grid(experiment: Any, grid: list[tuple[Point, Any]], traced: tuple[str, ...], n_seeds: int,
             progress: Any) -> tuple[Any, dict[str, str]]:
    """Each point's ``experiment.run`` in turn (module docstring): ``Results`` of the stacked table, whose
    summary prefixes each point's entries with its label (a point whose summary fails is named), and
    ``{short name: column}``, the column each swept field went to (``plot_grid`` reads it; the manifest keeps it
    as ``sweep.columns``)."""
    from experiments.engine.config import field_value
    from experiments.engine.results import Results, SummaryError, as_results, concat_tables

    tables, parts = [], []
    for i, (point, config) in enumerate(grid):
        progress.message(f"sweep point {i + 1}/{len(grid)}: {point.label}")
        progress.traced = Traced(traced, tuple(float(field_value(config, p)) for p in traced))
        try:
            results = as_results(experiment.run(config, n_seeds, progress))
        finally:
            progress.traced = None
        tables.append(dict(results.table))
        parts.append((point, results))
    columns = _column_names(grid, tables)
    for column, name in columns.items():
        for (point, _), table in zip(grid, tables):
            table[name] = np.full(len(next(iter(table.values()))), point.columns[column])

    def summarize():
        summary, errors = {}, []
        for point, results in parts:
            values, error = results.safe_summary()
            summary.update({f"{point.label}/{k}": v for k, v in values.items()})
            if error:
                errors.append(f"{point.label}: {error}")
        if errors:
            raise SummaryError("; ".join(errors))
        return summary

    return Results(concat_tables(tables), summarize), columns


def _column_names(grid: list[tuple[Point, Any]], tables: list[dict]) -> dict[str, str]:
    """``{short name: column}``: the short name, or the dotted path where the experiment's own table has a
    column of that name with other values (offline-rate's per-setting ``kl_coef``)."""
    names = {}
    paths = [o.split("=", 1)[0] for o in grid[0][0].overrides]
    for column, path in zip(grid[0][0].columns, paths):
        clash = any(column in t and not np.all(np.asarray(t[column]) == p.columns[column])
                    for (p, _), t in zip(grid, tables))
        names[column] = path if clash else column
        if clash and any(path in t for t in tables):
            raise UsageError(f"sweep field {path!r}: the experiment's table already has columns {column!r} and "
                             f"{path!r}; set its values with --set instead.")
    return names


def plot_grid(experiment: Any, grid: list[tuple[Point, Any]], columns: dict[str, str], table: dict,
              out_dir) -> list:
    """Each point's figures from its rows of ``table`` (the swept fields in ``columns``, as ``run_grid`` returned
    them), into ``out_dir/<point label>/``; the figures' paths."""
    from pathlib import Path

    figures = []
    n_rows = len(next(iter(table.values())))
    for point, config in grid:
        mask = np.ones(n_rows, bool)
        for short, value in point.columns.items():
            mask &= np.asarray(table[columns[short]]) == value
        sub = {k: np.asarray(v)[mask] for k, v in table.items() if k not in columns.values()}
        folder = Path(out_dir) / point.label
        folder.mkdir(parents=True, exist_ok=True)
        figures.extend(experiment.plot(sub, config, folder) or [])
    return figures
