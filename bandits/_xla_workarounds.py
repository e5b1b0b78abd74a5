"""Process-wide XLA settings that the toolkit needs on CPU; imported first by ``bandits``.

XLA's CPU "concurrency-optimized scheduler" was seen here (jax/jaxlib 0.10.2, 2-core CPU) to hang
forever on our compiled experiment programs that hold several independent loops (e.g. two optax
``lax.scan`` trainers beside ``lax.while_loop`` Newton solvers under ``vmap``): the program compiled
and then never finished, while each loop alone ran in under a second. Turning that scheduler off
fixed it with no measurable slowdown. XLA reads ``XLA_FLAGS`` when its CPU backend starts, so the flag
is added here unless the user set it themselves; ``tests/test_xla_workarounds.py`` guards it.
"""
import os

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_cpu_enable_concurrency_optimized_scheduler" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} {FLAG}".strip()
