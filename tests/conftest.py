"""Test configuration: float64 math, rank promotion raises, a deterministic hypothesis profile."""
import os

# Tests compile from scratch: the CLI's persistent compilation cache (experiments.engine.compile_cache) stays off,
# so a test never depends on, or writes to, the user's cache.
os.environ.setdefault("RLHF_BANDITS_COMPILATION_CACHE", "off")

# The suite is compile-bound (tiny shapes, ~15 XLA programs per test): LLVM's optimisation level 0 halves
# XLA's backend compile time here (test_tmps.py: 99 s -> 55 s) and changes no semantics (no fast-math).
# Set XLA_FLAGS with your own --xla_backend_optimization_level to test at another level.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile(
    "ci", deadline=None, derandomize=True, database=None, max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
