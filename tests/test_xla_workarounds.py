"""Regression guard: the CPU program shape that hung XLA's concurrency-optimized scheduler finishes."""
import os
import subprocess
import sys
import textwrap

from bandits import _xla_workarounds


def test_flag_is_set_for_this_process():
    assert _xla_workarounds.FLAG in os.environ.get("XLA_FLAGS", "")


def test_offline_program_with_two_trainers_finishes():
    """DPO and pessimistic DPO beside the MLE in one vmapped program: hung without the flag."""
    code = textwrap.dedent("""
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        from experiments.catalogue import offline_rate as e
        from experiments.engine.config import replace
        cfg = replace(e.Config(), sample_sizes=(64, 256, 1024, 4096), dpo_steps=100,
                      algorithms=("dpo", "pessimistic_dpo"))
        f = jax.jit(jax.vmap(lambda k, c: e.per_seed(k, c, 0.0, 1.0, cfg), in_axes=(0, None)))
        out = f(jax.random.split(jax.random.key(0), 8), np.float64(0.0))
        jax.block_until_ready(out)
        print("finished", float(out["subopt"].mean()))
    """)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finished" in done.stdout
