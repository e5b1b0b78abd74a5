"""docs/llm_bridge.md §5.4 test 16, second part, through lm-omd-features: P3's one-pass OMD on real MiniLM text
features ``z = phi(a) - phi(a')`` with a planted ``theta*`` recovers ``theta*``'s direction (needs torch).

Features: all-MiniLM-L6-v2 ``e(a)`` of the experiment's text bank (4 prompts x 32 responses), reduced to their
top 16 principal components and scaled to ``max ||phi|| = 1`` (``lm_omd_features.reduce_features``);
``theta* = 10 u``, ``u`` uniform on the sphere; uniform pairs, BT labels; OMD as in the experiment.
Calibration (``seed_keys(0, 400)``, OMD only): at dim 16, n = 512: cos min 0.885, mean 0.959; n = 1024:
min 0.918, 1% quantile 0.939, mean 0.977 (the test's n). At dim 8: n = 256 min 0.911, n = 384 min 0.944.
"""
import functools
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch loads OpenMP (see test_hf_real_models)

import jax
import jax.numpy as jnp
import numpy as np
import torch

from experiments.catalogue import lm_omd_features as lmo
from experiments.engine.runner import seed_keys

torch.set_num_threads(2)

N = 1024


def test_omd_recovers_a_planted_direction_on_minilm_features():
    raw, record = lmo.minilm_features()
    assert raw.shape == (4, 32, 384) and record["weights_sha256"].startswith("53aa5117")
    np.testing.assert_allclose(np.linalg.norm(raw, axis=-1), 1.0, atol=1e-12)
    phi, kept = lmo.reduce_features(raw, 16)
    print(f"MiniLM text bank: variance kept by 16 components {kept:.3f}")
    config = lmo.Config(features="minilm", dim=16, algorithms=("omd",), rounds=N, checkpoints=(N,), heldout=16,
                        timing_rounds=(N,))
    one = functools.partial(lmo.one_seed, phi=jnp.asarray(phi), reward_norm=config.reward_norm, config=config)
    cos = np.asarray(jax.jit(jax.vmap(lambda k: one(k)[0]["cosine"][-1, 0]))(seed_keys(0, 64)))
    print(f"OMD on MiniLM features, n={N}, 64 seeds: cos min {cos.min():.4f}, mean {cos.mean():.4f}")
    assert (cos > 0.9).all()
