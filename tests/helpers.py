"""Shared test helpers: random instances from hypothesis-drawn seeds and brute-force NumPy references."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import bandits as b

# A small fixed set of shapes (JAX compiles once per shape).
SHAPES = [(1, 2, 1), (3, 4, 2), (2, 6, 3)]

seeds = st.integers(min_value=0, max_value=2**31 - 1)
kl_coefs = st.floats(min_value=0.05, max_value=5.0, allow_nan=False)
shapes = st.sampled_from(SHAPES)


def random_log_policy(rng: np.random.Generator, n_x: int, k: int, scale: float = 2.0) -> np.ndarray:
    logits = scale * rng.standard_normal((n_x, k))
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def random_instance(seed: int, shape, kl_coef: float, skew_strength: float = 0.0,
                    reward_scale: float = 2.0) -> b.Instance:
    """Random features, reward, non-uniform pi0 and d0 (wider than the generator's families)."""
    n_x, k, d = shape
    rng = np.random.default_rng(seed)
    phi = rng.standard_normal((n_x, k, d))
    phi /= np.linalg.norm(phi, axis=-1, keepdims=True)
    reward = reward_scale * rng.standard_normal((n_x, k))
    log_pi0 = random_log_policy(rng, n_x, k)
    d0 = rng.dirichlet(np.ones(n_x))
    a = rng.standard_normal((d, d))
    skew = skew_strength * (a - a.T)
    return b.instance_from_arrays(phi, log_pi0, reward, kl_coef, d0=d0, skew=skew)


# ---- brute-force NumPy references (loops, no vectorization tricks) ----

def np_kl(p, q):
    return sum(pi * (np.log(pi) - np.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def np_gibbs(pi0_row, r_row, eta):
    w = np.array([p * np.exp(r / eta) for p, r in zip(pi0_row, r_row)])
    return w / w.sum()


def np_value(inst, pi):
    phi, r, pi0, d0, eta = (np.asarray(a) for a in (inst.phi, inst.reward, np.exp(inst.log_pi0),
                                                     inst.d0, inst.kl_coef))
    total = 0.0
    for x in range(r.shape[0]):
        total += d0[x] * (sum(pi[x, a] * r[x, a] for a in range(r.shape[1])) - eta * np_kl(pi[x], pi0[x]))
    return total


def np_pref(inst, x, a, bb):
    phi, r, s = np.asarray(inst.phi), np.asarray(inst.reward), np.asarray(inst.skew)
    m = r[x, a] - r[x, bb] + phi[x, a] @ s @ phi[x, bb]
    return 1.0 / (1.0 + np.exp(-m))


def np_win_rate(inst, p1, p2):
    d0 = np.asarray(inst.d0)
    n_x, k = p1.shape
    return sum(d0[x] * p1[x, a] * p2[x, c] * np_pref(inst, x, a, c)
               for x in range(n_x) for a in range(k) for c in range(k))


def readme_example(name: str) -> tuple[str, str]:
    """The README's worked example ``name`` (e.g. ``my_bonus``): the code block after the marker
    ``<!-- worked-example: NAME.py ... -->`` and the command after ``<!-- worked-example: NAME command -->``
    (``my_bonus``'s is marked ``worked-example: command``)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(rf"<!-- worked-example: {re.escape(name)}\.py.*?-->\s*```python\n(.*?)```", text, re.S).group(1)
    marker = "command" if name == "my_bonus" else f"{name} command"
    command = re.search(rf"<!-- worked-example: {re.escape(marker)} -->\s*```bash\n(.*?)```", text, re.S).group(1)
    return code, command.strip()

