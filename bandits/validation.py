"""Input validation at the boundary: every error names the field, the value and what is allowed.

Checks run on concrete (non-traced) values only, so the same constructors stay usable under
``jit``/``vmap`` (where the values were already validated by the caller's config).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np


class MissingDependencyError(ImportError):
    """An optional dependency (an extra, a model wheel) is not installed; the message says what to install."""


def is_concrete(value: Any) -> bool:
    """True when ``value`` holds data we can inspect (not a JAX tracer)."""
    return not isinstance(value, jax.core.Tracer)


def fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{field}={value!r} is not allowed: {field} must be {allowed}.")


# Sizes and counts index arrays with 32-bit integers (XLA's default index type): larger values overflow.
MAX_INT = 2**31 - 1


def check_int(field: str, value: Any, minimum: int, maximum: int = MAX_INT) -> int:
    """An integer in ``[minimum, maximum]`` (the default maximum keeps 32-bit array indices valid)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        fail(field, value, f"an integer >= {minimum}")
    if value < minimum:
        fail(field, value, f"an integer >= {minimum}")
    if value > maximum:
        fail(field, value, f"an integer in [{minimum}, {maximum}]")
    return int(value)


def check_float(field: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> float:
    """Check a finite real number in [low, high] (or (low, high] when ``low_open``)."""
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    allowed = f"a finite number in {'(' if low_open else '['}{lo}, {hi}]"
    try:
        x = float(value)
    except (TypeError, ValueError):
        fail(field, value, allowed)
    if not math.isfinite(x):
        fail(field, value, allowed)
    if low is not None and (x < low or (low_open and x == low)):
        fail(field, value, allowed)
    if high is not None and x > high:
        fail(field, value, allowed)
    return x


def check_choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        fail(field, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def check_registry_name(kind: str, name: Any, taken, *, overwrite: bool = False, dash: bool = True) -> str:
    """A name for a registry entry (``kind``: "strategy", "offline learner", ...): letters, digits, ``_``
    (and ``-`` when ``dash``), not already in ``taken`` unless ``overwrite``."""
    allowed = "letters, digits, '_' and '-'" if dash else "letters, digits and '_'"
    plain = name.replace("_", "") if isinstance(name, str) else ""
    if dash:
        plain = plain.replace("-", "")
    if not plain.isalnum():
        fail(f"{kind} name", name, f"a non-empty name of {allowed}")
    if name in taken and not overwrite:
        fail(f"{kind} name", name, f"a name not yet registered (taken: {', '.join(taken)}), or overwrite=True")
    return name


def check_names(field: str, values: Any, allowed: tuple[str, ...], *, empty: bool = False) -> tuple[str, ...]:
    """``values`` must be a tuple of distinct names from ``allowed`` (non-empty unless ``empty``)."""
    if not isinstance(values, tuple) or (not values and not empty):
        fail(field, values, "a non-empty tuple of " + ", ".join(repr(c) for c in allowed))
    for name in values:
        check_choice(field, name, allowed)
    if len(set(values)) != len(values):
        fail(field, values, "a tuple without repeated names")
    return values


def check_increasing_ints(field: str, values: Any, minimum: int = 1, maximum: int = MAX_INT) -> tuple[int, ...]:
    """``values`` must be a non-empty strictly increasing tuple of integers in ``[minimum, maximum]``."""
    ok = (isinstance(values, tuple) and values
          and all(not isinstance(n, bool) and isinstance(n, (int, np.integer)) for n in values)
          and list(values) == sorted(set(values)) and values[0] >= minimum and values[-1] <= maximum)
    if not ok:
        fail(field, values, f"a non-empty strictly increasing tuple of integers in [{minimum}, {maximum}]")
    return values


def check_shape(field: str, array: Any, shape: tuple[int, ...]) -> None:
    got = tuple(np.shape(array))
    if got != tuple(shape):
        raise ValueError(
            f"{field} has shape {got}, which is not allowed: {field} must have shape {tuple(shape)}.")


def check_normalized_rows(field: str, log_p) -> None:
    """Each row of the log-probabilities ``log_p`` must sum to 1 in probability (tolerance 1e-5)."""
    sums = np.exp(np.asarray(log_p)).sum(-1)
    if not np.allclose(sums, 1.0, atol=1e-5):
        i = int(np.argmax(np.abs(sums - 1.0)))
        raise ValueError(f"{field}[{i}] sums to {sums[i]!r} in probability, which is not allowed: "
                         "each row must be a normalised log-policy (probabilities summing to 1).")
