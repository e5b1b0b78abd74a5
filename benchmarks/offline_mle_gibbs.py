"""Benchmark (docs/design.md §8, issues 3 and 15): the offline-rate MLE-Gibbs sweep, ours vs NumPy/SciPy.

Workload: S seeds (default 1024) x 9 sample sizes n = 64..16384 (doubling); d=8, K=32, n_x=128, B=2,
kl_coef=1, lam=1, uniform pi0, float64. Per seed: instance, one pi0-vs-pi0 comparison stream of
16384, BT-MLE warm-started along the nested prefixes, Gibbs policy of the fitted reward, exact
suboptimality J(pi*) - J(pi_hat).

Implementations
  ours            the JAX engine: ``run_vectorized`` of a per-seed function doing the MLE-Gibbs path of
                  ``experiments/offline_rate.per_seed`` (generation of instance and stream INCLUDED in its time).
  B1-own          NumPy + SciPy, one seed at a time, as a researcher writes it (issue 15): the seed's instance
                  and stream drawn with NumPy (``default_rng([0, seed])``, ``np_seed``), then one n at a time
                  ``scipy.optimize.minimize(method="L-BFGS-B")`` with analytic gradient, warm-started across n,
                  exact evaluation in NumPy. Generation INCLUDED in its time.
  B3-own          NumPy vectorised over seeds: the same per-seed NumPy draws stacked, then batched damped
                  Newton (``np.linalg.cholesky`` + solves on [S, d, d] stacks, Armijo backtracking over the
                  same 12 candidates tried in order, Newton-decrement tolerance 1e-20 as ours). Generation
                  INCLUDED in its time.
  B1-same-data,   the same two fits on the SAME instances and data as ours, generated once by our JAX code
  B3-same-data    and converted to NumPy; that generation is NOT in their timed regions (it is timed
                  separately and reported). They give the seed-by-seed agreement check.
Agreement: ours vs B1-same-data / B3-same-data seed by seed (relative difference, ``--rtol``); B1-own vs
B3-own seed by seed (same NumPy seeds); ours vs B1-own and B3-own statistically (other random streams):
mean suboptimality per n, two-sample 95% intervals (``statistical_check``).

Usage (see benchmarks/README.md):
  PYTHONPATH=. python benchmarks/offline_mle_gibbs.py                 # everything, writes JSON
  PYTHONPATH=. python benchmarks/offline_mle_gibbs.py --quick         # end-to-end check (8 seeds, 1 repeat)
  PYTHONPATH=. python benchmarks/offline_mle_gibbs.py --part ours     # one part (used internally)
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SAMPLE_SIZES = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
D, K, NX, B_NORM, ETA, LAM = 8, 32, 128, 2.0, 1.0, 1.0
TOL = 1e-20          # Newton decrement tolerance (ours' float64 default, algorithms.core.newton.default_tol)
MAX_ITER = 100
STEPS = 2.0 ** -np.arange(12)


# ----------------------------------------------------------------------------------------------
# ours (JAX)
# ----------------------------------------------------------------------------------------------

def _jax():
    import jax
    jax.config.update("jax_enable_x64", True)
    return jax


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    sample_sizes: tuple = SAMPLE_SIZES


def ours_per_seed(key, config: BenchConfig):
    """MLE-Gibbs path of offline_rate.per_seed: subopt [9], theta_hat [9, d], Newton iterations [9]."""
    import jax
    import jax.numpy as jnp
    import bandits as b
    from algorithms.offline import gshf as offline
    from algorithms.core.bt_mle import fit_bt_mle

    k_inst, k_data = jax.random.split(key)
    inst = b.make_instance(k_inst, b.InstanceConfig(n_contexts=NX, n_actions=K, dim=D, reward_norm=B_NORM,
                                                    kl_coef=ETA))
    n_max = config.sample_sizes[-1]
    stream = b.sample_preference_data(k_data, inst, inst.log_pi0, inst.log_pi0, n_max)
    z_all = b.feature_differences(inst, stream)
    theta = jnp.zeros(D, z_all.dtype)
    subopt, thetas, iters = [], [], []
    for n in config.sample_sizes:
        fit = fit_bt_mle(z_all[:n], stream.y[:n], stream.mask[:n], LAM, theta0=theta)
        theta = fit.theta
        pi = offline.linear_gibbs(inst, theta)
        subopt.append(b.suboptimality(inst, pi))
        thetas.append(theta)
        iters.append(fit.iterations)
    return {"subopt": jnp.stack(subopt), "theta": jnp.stack(thetas), "iterations": jnp.stack(iters)}


def run_ours(seeds: int, repeats: int, out: Path, chunk: int) -> dict:
    t_import = time.perf_counter()
    jax = _jax()
    import bandits  # noqa: F401
    from experiments.engine.runner import Progress, run_vectorized, seed_keys
    t_import = time.perf_counter() - t_import
    keys = seed_keys(0, seeds)
    jax.block_until_ready(keys)
    fn = functools.partial(ours_per_seed, config=BenchConfig())
    calls = []
    for r in range(1 + repeats):
        progress = Progress()
        t0 = time.perf_counter()
        res = run_vectorized(fn, keys, progress=progress, chunk_size=chunk)
        wall = time.perf_counter() - t0
        rec = progress.calls[0]
        calls.append({"wall_s": wall, "compile_s": rec["compile_s"], "run_s": rec["run_s"],
                      "reused_executable": rec["reused_executable"]})
    np.savez(out / f"ours_{len(jax.devices())}dev.npz", **res)
    steady = [c["run_s"] for c in calls[1:]]
    steady_wall = [c["wall_s"] for c in calls[1:]]
    return {"devices": len(jax.devices()), "chunk_size": chunk, "import_s": t_import, "first_call": calls[0],
            "steady_run_s": steady, "steady_run_median_s": statistics.median(steady),
            "steady_wall_median_s": statistics.median(steady_wall),
            "iterations_sum": res["iterations"].sum(0).tolist(),
            "iterations_max": res["iterations"].max(0).tolist()}


def generate_numpy_data(seeds: int, chunk: int):
    """Instances and streams of the same seeds as ours, by our JAX code, as NumPy (timed separately)."""
    jax = _jax()
    import jax.numpy as jnp
    import bandits as b
    from experiments.engine.runner import seed_keys

    def gen(key):
        k_inst, k_data = jax.random.split(key)
        inst = b.make_instance(k_inst, b.InstanceConfig(n_contexts=NX, n_actions=K, dim=D,
                                                        reward_norm=B_NORM, kl_coef=ETA))
        stream = b.sample_preference_data(k_data, inst, inst.log_pi0, inst.log_pi0, SAMPLE_SIZES[-1])
        z = b.feature_differences(inst, stream)
        return {"phi": inst.phi, "log_pi0": inst.log_pi0, "reward": inst.reward, "z": z,
                "y": stream.y.astype(jnp.float64)}

    f = jax.jit(jax.vmap(gen))
    keys = seed_keys(0, seeds)
    t0 = time.perf_counter()
    compiled = f.lower(keys[:chunk]).compile()
    t_compile = time.perf_counter() - t0
    t_run, parts = 0.0, []
    for start in range(0, seeds, chunk):   # same chunking as ours (memory)
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(keys[start:start + chunk]))
        t_run += time.perf_counter() - t0
        parts.append({k: np.asarray(v) for k, v in out.items()})
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return data, {"compile_s": t_compile, "run_s": t_run}


# ----------------------------------------------------------------------------------------------
# exact evaluation in NumPy (shared by B1 and B3; works on one seed or a stack of seeds)
# ----------------------------------------------------------------------------------------------

def _logsumexp(a, axis=-1):
    m = np.max(a, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))).squeeze(axis)


def np_subopt(phi, log_pi0, reward, theta, eta=ETA):
    """``J(pi*) - J(Gibbs(phi theta))`` exactly; phi [..., n_x, K, d], theta [..., d] -> [...]."""
    r_hat = np.einsum("...xkd,...d->...xk", phi, theta)
    logits = log_pi0 + r_hat / eta
    log_pi = logits - _logsumexp(logits)[..., None]
    j_star = eta * np.mean(_logsumexp(log_pi0 + reward / eta), axis=-1)
    pi = np.exp(log_pi)
    j = np.mean(np.sum(pi * reward, -1) - eta * np.sum(pi * (log_pi - log_pi0), -1), axis=-1)
    return j_star - j


# ----------------------------------------------------------------------------------------------
# B1: NumPy + SciPy, one seed and one n at a time, L-BFGS-B warm-started
# ----------------------------------------------------------------------------------------------

def _nll_grad(theta, z, y, s, lam):
    u = z @ theta
    f = np.sum(np.logaddexp(0.0, -s * u)) + 0.5 * lam * theta @ theta
    from scipy.special import expit
    g = z.T @ (expit(u) - y) + lam * theta
    return f, g


def b1_fit_seed(z_all, y_all, phi, log_pi0, reward, gtol: float):
    """One seed: L-BFGS-B on each nested prefix ``z_all[:n], y_all[:n]`` in turn, warm-started at the previous
    n's optimum, and the exact suboptimality of each fit's Gibbs policy. Returns subopt [9], theta [9, d],
    L-BFGS iterations [9]."""
    from scipy.optimize import minimize
    subopt = np.zeros(len(SAMPLE_SIZES))
    thetas = np.zeros((len(SAMPLE_SIZES), D))
    nit = np.zeros(len(SAMPLE_SIZES), int)
    theta = np.zeros(D)
    for j, n in enumerate(SAMPLE_SIZES):
        z, y = z_all[:n], y_all[:n]
        res = minimize(_nll_grad, theta, args=(z, y, 2.0 * y - 1.0, LAM), jac=True, method="L-BFGS-B",
                       options={"gtol": gtol, "ftol": 1e-15, "maxiter": 1000, "maxcor": 10})
        theta = res.x
        thetas[j], nit[j] = theta, res.nit
        subopt[j] = np_subopt(phi, log_pi0, reward, theta)
    return subopt, thetas, nit


def _import_scipy():
    """Import SciPy's pieces before timing (a researcher's session has them loaded)."""
    import scipy.optimize
    import scipy.special  # noqa: F401


def run_b1(data, seed_ids, gtol: float):
    """B1-same-data: ``b1_fit_seed`` on ours' data (``generate_numpy_data``) of seeds ``seed_ids``."""
    _import_scipy()
    parts = []
    t0 = time.perf_counter()
    for s_id in seed_ids:
        parts.append(b1_fit_seed(data["z"][s_id], data["y"][s_id], data["phi"][s_id], data["log_pi0"][s_id],
                                 data["reward"][s_id], gtol))
    seconds = time.perf_counter() - t0
    return (*(np.stack(a) for a in zip(*parts)), seconds)


def np_seed(seed: int, root: int = 0, n_max: int = SAMPLE_SIZES[-1]) -> dict:
    """One seed's instance and pi0-vs-pi0 stream drawn with NumPy (``default_rng([root, seed])``), with the law
    of ``bandits.make_instance`` and ``bandits.sample_preference_data`` at this benchmark's sizes
    (docs/theory.md §1, §8.1):

        phi(x, a) = g / ||g||, g ~ N(0, I_d)   (uniform on the unit sphere, [n_x, K, d])
        theta* = B u / ||u||, u ~ N(0, I_d)    (norm B, uniform direction);  r*(x, a) = <theta*, phi(x, a)>
        pi0 = d0 = uniform (coverage 0, temperature 0: pi0's direction xi does not enter), no skew
        x ~ U[n_x], a1, a2 ~ U[K] (pi0 vs pi0), y ~ Bernoulli(sigmoid(r*(x, a1) - r*(x, a2)))

    and ``z = phi(x, a1) - phi(x, a2)``. The draws differ from ours' (NumPy's PCG64, not Threefry), the law does not.
    """
    from scipy.special import expit
    rng = np.random.default_rng([root, seed])
    g = rng.standard_normal((NX, K, D))
    phi = g / np.linalg.norm(g, axis=-1, keepdims=True)
    u = rng.standard_normal(D)
    theta_star = B_NORM * u / np.linalg.norm(u)
    reward = phi @ theta_star
    x = rng.integers(NX, size=n_max)
    a1 = rng.integers(K, size=n_max)
    a2 = rng.integers(K, size=n_max)
    y = (rng.random(n_max) < expit(reward[x, a1] - reward[x, a2])).astype(np.float64)
    return {"phi": phi, "log_pi0": np.full((NX, K), -math.log(K)), "reward": reward,
            "z": phi[x, a1] - phi[x, a2], "y": y}


def run_b1_own(seed_ids, gtol: float):
    """B1-own: per seed, ``np_seed`` then ``b1_fit_seed``, both in the timed region. Returns subopt [S, 9],
    theta [S, 9, d], L-BFGS iterations [S, 9], seconds, of which generation seconds."""
    _import_scipy()
    parts, t_gen = [], 0.0
    t0 = time.perf_counter()
    for s_id in seed_ids:
        t1 = time.perf_counter()
        seed = np_seed(int(s_id))
        t_gen += time.perf_counter() - t1
        parts.append(b1_fit_seed(seed["z"], seed["y"], seed["phi"], seed["log_pi0"], seed["reward"], gtol))
    seconds = time.perf_counter() - t0
    return (*(np.stack(a) for a in zip(*parts)), seconds, t_gen)


# ----------------------------------------------------------------------------------------------
# B3: NumPy vectorised over seeds, batched damped Newton (same algorithm and tolerance as ours)
# ----------------------------------------------------------------------------------------------

def _softplus_sum(v):
    return np.sum(np.logaddexp(0.0, v), axis=-1)


def run_b3(data):
    from scipy.special import expit
    S = data["z"].shape[0]
    subopt = np.zeros((S, len(SAMPLE_SIZES)))
    thetas = np.zeros((S, len(SAMPLE_SIZES), D))
    iters = np.zeros((S, len(SAMPLE_SIZES)), int)
    eye = np.eye(D)
    eps = np.finfo(np.float64).eps
    t0 = time.perf_counter()
    theta = np.zeros((S, D))
    for j, n in enumerate(SAMPLE_SIZES):
        z_all, y_all = data["z"][:, :n], data["y"][:, :n]
        active = np.arange(S)
        it = 0
        while active.size and it < MAX_ITER:
            z, y, th = z_all[active], y_all[active], theta[active]
            sgn = 2.0 * y - 1.0
            u = np.einsum("snd,sd->sn", z, th)
            p = expit(u)
            g = np.einsum("snd,sn->sd", z, p - y) + LAM * th
            c = p * (1.0 - p)
            h = np.matmul(np.swapaxes(z * c[..., None], 1, 2), z) + LAM * eye
            L = np.linalg.cholesky(h)
            w = np.linalg.solve(L, g[..., None])
            direction = -np.linalg.solve(np.swapaxes(L, 1, 2), w)[..., 0]
            decrement = -0.5 * np.sum(g * direction, -1)
            f0 = _softplus_sum(-sgn * u) + 0.5 * LAM * np.sum(th * th, -1)
            v = np.einsum("snd,sd->sn", z, direction)   # z (th + t dir) = u + t v: one matvec for all t
            slack = 64.0 * eps * np.abs(f0)
            step = np.zeros(active.size)
            found = np.zeros(active.size, bool)
            for t in STEPS:                              # same candidates and Armijo test as ours
                pending = ~found
                if not pending.any():
                    break
                th_t = th[pending] + t * direction[pending]
                ft = _softplus_sum(-sgn[pending] * (u[pending] + t * v[pending])) + \
                    0.5 * LAM * np.sum(th_t * th_t, -1)
                ok = ft <= f0[pending] - 0.5 * t * decrement[pending] + slack[pending]
                idx = np.flatnonzero(pending)[ok]
                step[idx], found[idx] = t, True
            theta[active] = th + step[:, None] * direction
            iters[active, j] += 1
            it += 1
            keep = (decrement > TOL) & (step != 0.0)
            active = active[keep]
        thetas[:, j] = theta
        subopt[:, j] = np_subopt(data["phi"], data["log_pi0"], data["reward"], theta)
    return subopt, thetas, iters, time.perf_counter() - t0


def run_b3_own(seed_ids):
    """B3-own: ``np_seed`` of every seed (per-seed generators, so seed i's data are B1-own's), stacked into
    [S, ...] arrays, then ``run_b3``, all in the timed region. Returns subopt [S, 9], theta [S, 9, d], Newton
    iterations [S, 9], seconds, of which generation seconds."""
    _import_scipy()
    S, n_max = len(seed_ids), SAMPLE_SIZES[-1]
    t0 = time.perf_counter()
    data = {"phi": np.empty((S, NX, K, D)), "log_pi0": np.empty((S, NX, K)), "reward": np.empty((S, NX, K)),
            "z": np.empty((S, n_max, D)), "y": np.empty((S, n_max))}
    for i, s_id in enumerate(seed_ids):
        for name, value in np_seed(int(s_id)).items():
            data[name][i] = value
    t_gen = time.perf_counter() - t0
    subopt, thetas, iters, _ = run_b3(data)
    return subopt, thetas, iters, time.perf_counter() - t0, t_gen


# ----------------------------------------------------------------------------------------------
# machine limits
# ----------------------------------------------------------------------------------------------

def measure_peak(repeats=5):
    a = np.random.default_rng(0).standard_normal((4096, 4096))
    bm = a.copy()
    a @ bm
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ bm
        ts.append(time.perf_counter() - t0)
    flops = 2 * 4096 ** 3 / min(ts)
    x = np.ones(2 ** 27)   # 1 GiB float64
    y = np.empty_like(x)
    np.copyto(y, x)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(y, x)
        ts.append(time.perf_counter() - t0)
    bw = 2 * x.nbytes / min(ts)   # read + write
    jax = _jax()
    import jax.numpy as jnp
    aj = jnp.asarray(a)
    mm = jax.jit(lambda p, q: p @ q)
    jax.block_until_ready(mm(aj, aj))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(mm(aj, aj))
        ts.append(time.perf_counter() - t0)
    return {"numpy_matmul_flops": flops, "jax_matmul_flops": 2 * 4096 ** 3 / min(ts),
            "copy_bandwidth_Bps": bw}


def rng_only_per_seed(key):
    """Exactly the random draws of ``ours_per_seed`` for one seed, drawn the way the engine draws them,
    reduced to one number so that nothing is dead code.

    The key splits of ``ours_per_seed`` and ``make_instance``; the instance's Gaussians (features [n_x, K, d],
    theta* [d], the reference direction [d]; a zero skew block draws nothing); the stream's 4 uniforms per
    comparison for all 16384 comparisons, in float64, from ``bandits.comparison_uniforms`` (counter-based
    Threefry, one bulk hash), the function ``sample_preference_data`` calls.
    """
    jax = _jax()
    import jax.numpy as jnp
    from bandits import comparison_uniforms

    k_inst, k_data = jax.random.split(key)
    k_phi, k_rew, k_ref, _ = jax.random.split(k_inst, 4)
    total = jnp.sum(jax.random.normal(k_phi, (NX, K, D), jnp.float64))
    total += jnp.sum(jax.random.normal(k_rew, (D,), jnp.float64))
    total += jnp.sum(jax.random.normal(k_ref, (D,), jnp.float64))
    return total + jnp.sum(comparison_uniforms(k_data, jnp.arange(SAMPLE_SIZES[-1]), jnp.float64))


def measure_rng_only(seeds: int, chunk: int, repeats=3):
    """Time of JAX generating exactly the random draws of the sweep (``rng_only_per_seed``), and nothing
    else: jitted and vmapped over the same chunks of seed keys as ours, on this process's devices (one),
    compile excluded, median of ``repeats``."""
    jax = _jax()
    from experiments.engine.runner import seed_keys

    keys = seed_keys(0, seeds)
    f = jax.jit(jax.vmap(rng_only_per_seed)).lower(keys[:chunk]).compile()
    jax.block_until_ready(f(keys[:chunk]))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for start in range(0, seeds, chunk):
            jax.block_until_ready(f(keys[start:start + chunk]))
        ts.append(time.perf_counter() - t0)
    return {"rng_only_s": statistics.median(ts), "rng_only_runs": ts}


def work_model(iterations_sum, seeds):
    """FLOPs and bytes of the useful work of ours, from per-seed Newton iteration counts.

    Per Newton iteration at size n (d = 8): u = z theta 2nd; gradient 2nd; Hessian nd + 2nd^2;
    Cholesky d^3/3 and two triangular solves 2d^2; one line-search trial 2nd + 2n (the full step,
    accepted near the optimum; ``f(theta)`` is carried from the previous trial); sigmoid/softplus
    counted as 1 FLOP per element (a lower bound). Plus the final
    gradient/Hessian of fit_bt_mle (4nd + nd + 2nd^2) per fit and the evaluation per (seed, n)
    (phi theta 2 n_x K d, Gibbs + exact values ~ 12 n_x K). Bytes: z and y read once per Newton
    iteration (8 n (d + 1)), a lower bound (perfect fusion, nothing else re-read).
    """
    flops = bytes_ = 0.0
    for n, its in zip(SAMPLE_SIZES, iterations_sum):
        per_iter = (2 * n * D + 2 * n * D + n * D + 2 * n * D * D + D ** 3 / 3 + 2 * D * D
                    + (2 * n * D + 2 * n) + 2 * n)
        flops += its * per_iter + seeds * (5 * n * D + 2 * n * D * D + 2 * NX * K * D + 12 * NX * K)
        bytes_ += its * 8 * n * (D + 1)
    return flops, bytes_


# ----------------------------------------------------------------------------------------------
# statistics (also used by online_loop.py)
# ----------------------------------------------------------------------------------------------

def mean_ci(values):
    """Mean, standard error ``sd / sqrt(n)`` and 95% half-width ``1.96 se`` (NaN spread for one value)."""
    values = np.asarray(values, float)
    se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(se), float(1.96 * se)


def statistical_check(name_a, a, name_b, b, z: float = 1.96) -> dict:
    """Two-sample check of two independent samples (different RNG streams): consistent when
    ``|mean_a - mean_b| <= z sqrt(se_a^2 + se_b^2)`` (z = 1.96: a 5% test)."""
    ma, sa, ha = mean_ci(a)
    mb, sb, hb = mean_ci(b)
    combined = z * math.sqrt(sa ** 2 + sb ** 2)
    return {"a": name_a, "b": name_b, "mean_a": ma, "ci95_a": ha, "n_a": len(a), "mean_b": mb, "ci95_b": hb,
            "n_b": len(b), "diff": ma - mb, "z": z, "combined_ci": combined,
            "intervals_overlap": bool(abs(ma - mb) <= ha + hb), "consistent": bool(abs(ma - mb) <= combined)}


def curve_check(name_a, subopt_a, name_b, subopt_b) -> dict:
    """``statistical_check`` of the mean suboptimality at each n (columns of ``[S, 9]`` arrays) at 5%, and the
    family of the 9 at 5% overall (Bonferroni: each at ``z = Phi^-1(1 - 0.05 / 18) = 2.77``)."""
    per_n = [dict(statistical_check(name_a, subopt_a[:, j], name_b, subopt_b[:, j]), n=n)
             for j, n in enumerate(SAMPLE_SIZES)]
    z_family = statistics.NormalDist().inv_cdf(1.0 - 0.05 / (2 * len(SAMPLE_SIZES)))
    family = [statistical_check(name_a, subopt_a[:, j], name_b, subopt_b[:, j], z_family)["consistent"]
              for j in range(len(SAMPLE_SIZES))]
    return {"a": name_a, "b": name_b, "per_n": per_n, "consistent_count": sum(c["consistent"] for c in per_n),
            "all_consistent": all(c["consistent"] for c in per_n), "family_z": z_family,
            "family_consistent": all(family)}


def _print_curve_check(check):
    print(f"  {check['a']} vs {check['b']}: mean subopt +- 95% CI per n; {check['consistent_count']}/"
          f"{len(check['per_n'])} consistent at 5%, family of all n at 5% (Bonferroni, z = "
          f"{check['family_z']:.2f}): {'consistent' if check['family_consistent'] else 'NOT consistent'}")
    for c in check["per_n"]:
        print(f"    n={c['n']:>5}: {c['mean_a']:.5g} +- {c['ci95_a']:.2g} (S={c['n_a']})  vs  {c['mean_b']:.5g} "
              f"+- {c['ci95_b']:.2g} (S={c['n_b']}): diff {c['diff']:+.3g}, combined +-{c['combined_ci']:.2g} "
              f"-> {'consistent' if c['consistent'] else 'NOT consistent'}")


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------

def _subprocess_part(part, seeds, repeats, out, devices, chunk):
    env = dict(os.environ)
    env["JAX_NUM_CPU_DEVICES"] = str(devices)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    cmd = [sys.executable, __file__, "--part", part, "--seeds", str(seeds), "--repeats", str(repeats),
           "--out", str(out), "--chunk-size", str(chunk)]
    subprocess.run(cmd, env=env, check=True)
    return json.loads((out / f"{part}_{devices}dev.json").read_text())


def _uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _rel(a, b):
    """Largest relative difference ``|a - b| / |b|``."""
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def _b1_subsets(spec: str, seeds: int, rng) -> list:
    sizes = [seeds] if spec == "all" else [min(int(s), seeds) for s in spec.split(",")]
    return [np.sort(rng.choice(seeds, size=size, replace=False)) for size in sizes]


def _b1_record(ids, seconds, seeds, nit, gen_s=None):
    rec = {"size": len(ids), "seconds": seconds, "per_seed_s": seconds / len(ids),
           "extrapolated_s": seconds / len(ids) * seeds, "nit_mean": nit.mean(0).tolist()}
    if gen_s is not None:
        rec["generation_s"] = gen_s
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", default="all", choices=["all", "ours"])
    ap.add_argument("--quick", action="store_true", help="end-to-end check in a few minutes (timings "
                    "meaningless): --seeds 8 --repeats 1 --chunk-size 8 --b1-subsets 4,8, 2 peak repeats "
                    "(explicit flags still win)")
    ap.add_argument("--seeds", type=int, default=None, help="default 1024 (8 with --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="steady-state calls of ours, runs of B3 and "
                    "of RNG-only (median); default 3 (1 with --quick)")
    ap.add_argument("--devices", default="1,2", help="ours' runs: one fresh subprocess per entry with "
                    "JAX_NUM_CPU_DEVICES=N (seed axis sharded); the first is the reference of the checks")
    ap.add_argument("--baselines", default="same,own", help="which NumPy baselines run: 'same' (B1/B3 on "
                    "ours' data), 'own' (B1/B3 generating their own data with NumPy), or both")
    ap.add_argument("--b1-subsets", default=None, help="sizes of random seed subsets timed for B1, "
                    "extrapolated linearly to all seeds; 'all' runs every seed; default 64,128 (4,8 with --quick)")
    ap.add_argument("--b1-gtol", type=float, default=1e-10)
    ap.add_argument("--rtol", type=float, default=1e-6, help="seed-by-seed agreement tolerance (relative)")
    ap.add_argument("--skip-limits", action="store_true", help="skip the machine-limit measurements")
    ap.add_argument("--out", default="/tmp/rlhf_bench")
    ap.add_argument("--chunk-size", type=int, default=None, help="seeds per compiled call (memory: the "
                    "engine's data sampling needs ~40 MB per seed); same chunks for generation and RNG-only; "
                    "default 64 (8 with --quick)")
    args = ap.parse_args(argv)
    preset = ({"seeds": 8, "repeats": 1, "b1_subsets": "4,8", "chunk_size": 8} if args.quick else
              {"seeds": 1024, "repeats": 3, "b1_subsets": "64,128", "chunk_size": 64})
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.chunk_size = min(args.chunk_size, args.seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.part == "ours":
        res = run_ours(args.seeds, args.repeats, out, args.chunk_size)
        (out / f"ours_{res['devices']}dev.json").write_text(json.dumps(res, indent=1))
        return

    devices = [int(x) for x in args.devices.split(",") if x.strip()]
    baselines = {x.strip() for x in args.baselines.split(",") if x.strip()}
    if not devices or any(n < 1 for n in devices):
        ap.error(f"--devices {args.devices!r} is not allowed: give device counts >= 1, e.g. 1,2")
    if not baselines or not baselines <= {"same", "own"}:
        ap.error(f"--baselines {args.baselines!r} is not allowed: give 'same', 'own' or 'same,own'")

    from benchmarks.online_loop import machine_description   # not at the top: online_loop imports this module
    report = {"seeds": args.seeds, "quick": args.quick, "repeats": args.repeats, "chunk_size": args.chunk_size,
              "machine": machine_description(), "uptime_before": _uptime()}
    print("uptime:", report["uptime_before"], flush=True)
    # ours, fresh processes (the first call includes tracing + compilation)
    ours_runs = {}
    for n_dev in devices:
        report[f"ours_{n_dev}dev"] = _subprocess_part("ours", args.seeds, args.repeats, out, n_dev, args.chunk_size)
        report[f"uptime_after_ours_{n_dev}dev"] = _uptime()
        ours_runs[n_dev] = dict(np.load(out / f"ours_{n_dev}dev.npz"))
        print(f"ours {n_dev} device(s):", json.dumps(report[f"ours_{n_dev}dev"]), flush=True)
    ref = devices[0]
    ours = ours_runs[ref]
    agree = {f"ours_{ref}dev_vs_{n}dev_maxabs": float(np.max(np.abs(ours_runs[n]["subopt"] - ours["subopt"])))
             for n in devices[1:]}
    curves = {"n": list(SAMPLE_SIZES), f"ours_{ref}dev": ours["subopt"].mean(0).tolist()}
    subsets = _b1_subsets(args.b1_subsets, args.seeds, np.random.default_rng(1))
    rel_keys = []

    if "same" in baselines:
        data, gen = generate_numpy_data(args.seeds, args.chunk_size)
        report["generation_jax"] = gen
        print("generation (JAX, for B1/B3-same-data):", gen, flush=True)
        b3_times = []
        for _ in range(args.repeats):
            b3_sub, b3_theta, b3_it, t = run_b3(data)
            b3_times.append(t)
            print(f"B3-same-data run: {t:.2f} s", flush=True)
        report["b3_same_data"] = {"runs_s": b3_times, "median_s": statistics.median(b3_times),
                                  "iterations_sum": b3_it.sum(0).tolist()}
        b1 = []
        for ids in subsets:
            sub, th, nit, t = run_b1(data, ids, args.b1_gtol)
            b1.append((ids, sub, th, _b1_record(ids, t, args.seeds, nit)))
            print(f"B1-same-data {len(ids)} seeds: {t:.2f} s -> {t / len(ids) * args.seeds:.1f} s for "
                  f"{args.seeds}", flush=True)
        report["b1_same_data"] = [r for *_, r in b1]
        del data
        agree.update({"ours_vs_b3_same_data_rel": _rel(b3_sub, ours["subopt"]),
                      "ours_vs_b3_same_data_theta_maxabs": float(np.max(np.abs(b3_theta - ours["theta"]))),
                      "ours_vs_b3_same_data_iterations_equal_frac": float(np.mean(b3_it == ours["iterations"]))})
        rel_keys.append("ours_vs_b3_same_data_rel")
        for ids, sub, th, _ in b1:
            agree[f"ours_vs_b1_same_data[{len(ids)}]_rel"] = _rel(sub, ours["subopt"][ids])
            agree[f"ours_vs_b1_same_data[{len(ids)}]_theta_maxabs"] = float(np.max(np.abs(th - ours["theta"][ids])))
            rel_keys.append(f"ours_vs_b1_same_data[{len(ids)}]_rel")
        curves["b3_same_data"] = b3_sub.mean(0).tolist()
        curves[f"b1_same_data[{len(b1[0][0])}]"] = b1[0][1].mean(0).tolist()
        curves[f"ours_{ref}dev_on_b1_same_data[{len(b1[0][0])}]_seeds"] = ours["subopt"][b1[0][0]].mean(0).tolist()

    if "own" in baselines:
        b3_times, b3_gen = [], []
        for _ in range(args.repeats):
            b3o_sub, b3o_theta, b3o_it, t, t_gen = run_b3_own(np.arange(args.seeds))
            b3_times.append(t)
            b3_gen.append(t_gen)
            print(f"B3-own run: {t:.2f} s (of which NumPy generation {t_gen:.2f} s)", flush=True)
        report["b3_own"] = {"runs_s": b3_times, "generation_s": b3_gen, "median_s": statistics.median(b3_times),
                            "iterations_sum": b3o_it.sum(0).tolist()}
        b1o = []
        for ids in subsets:
            sub, th, nit, t, t_gen = run_b1_own(ids, args.b1_gtol)
            b1o.append((ids, sub, th, _b1_record(ids, t, args.seeds, nit, t_gen)))
            print(f"B1-own {len(ids)} seeds: {t:.2f} s (of which NumPy generation {t_gen:.2f} s) -> "
                  f"{t / len(ids) * args.seeds:.1f} s for {args.seeds}", flush=True)
        report["b1_own"] = [r for *_, r in b1o]
        ids_main, b1o_sub = b1o[-1][0], b1o[-1][1]
        key = f"b1_own[{len(ids_main)}]_vs_b3_own_rel"
        agree[key] = _rel(b1o_sub, b3o_sub[ids_main])
        agree[f"b1_own[{len(ids_main)}]_vs_b3_own_theta_maxabs"] = float(np.max(np.abs(b1o[-1][2] - b3o_theta[ids_main])))
        rel_keys.append(key)
        checks = [curve_check(f"ours_{ref}dev", ours["subopt"], f"B1-own[{len(ids_main)}]", b1o_sub),
                  curve_check(f"ours_{ref}dev", ours["subopt"], "B3-own", b3o_sub)]
        agree["statistical"] = checks
        agree["statistical_pass"] = all(c["family_consistent"] for c in checks)
        curves["b3_own"] = b3o_sub.mean(0).tolist()
        curves[f"b1_own[{len(ids_main)}]"] = b1o_sub.mean(0).tolist()

    agree["rtol"] = args.rtol
    agree["seed_by_seed_pass"] = all(agree[k] <= args.rtol for k in rel_keys)
    agree["pass"] = agree["seed_by_seed_pass"] and agree.get("statistical_pass", True)
    report["agreement"] = agree
    report["mean_subopt_curve"] = curves
    print("agreement, seed by seed (max relative subopt difference; rtol", args.rtol, "):",
          {k: f"{agree[k]:.2g}" for k in rel_keys}, "->", "pass" if agree["seed_by_seed_pass"] else "FAIL",
          flush=True)
    if "statistical" in agree:
        print("agreement, statistical (different RNG streams: two-sample check):")
        for check in agree["statistical"]:
            _print_curve_check(check)
    report["uptime_after_baselines"] = _uptime()
    report["speedups"] = speedups(report, devices)
    for name, s in report["speedups"].items():
        print(f"speed-up, {name}: steady state {s['steady']:.2f}x, end to end (compile + first run) "
              f"{s['end_to_end']:.2f}x", flush=True)

    if not args.skip_limits:
        peak = measure_peak(repeats=2 if args.quick else 5)
        rng_only = measure_rng_only(args.seeds, args.chunk_size, repeats=args.repeats)
        flops, bytes_ = work_model(report[f"ours_{ref}dev"]["iterations_sum"], args.seeds)
        peak_flops = max(peak["numpy_matmul_flops"], peak["jax_matmul_flops"])
        t_limit_parts = {"flops_s": flops / peak_flops, "bytes_s": bytes_ / peak["copy_bandwidth_Bps"],
                         "rng_s": rng_only["rng_only_s"]}
        report["limits"] = {**peak, **rng_only, "flops": flops, "bytes": bytes_, **t_limit_parts,
                            "t_limit_s": max(t_limit_parts.values()),
                            "limit_fraction": max(t_limit_parts.values())
                            / report[f"ours_{ref}dev"]["steady_run_median_s"]}
        print("limits:", report["limits"], flush=True)
    report["uptime_after"] = _uptime()
    print("uptime:", report["uptime_after"], flush=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    print("wrote", out / "report.json")


def speedups(report: dict, devices) -> dict:
    """Baseline time / ours' time for each baseline that ran and each device count of ours: steady state
    (ours' median steady run) and end to end (ours' compile + first run). B1's time is its largest subset's,
    extrapolated to all seeds; B3's its median."""
    base = {}
    if "b1_own" in report:
        base["B1-own"] = report["b1_own"][-1]["extrapolated_s"]
        base["B3-own"] = report["b3_own"]["median_s"]
    if "b1_same_data" in report:
        base["B1-same-data"] = report["b1_same_data"][-1]["extrapolated_s"]
        base["B3-same-data"] = report["b3_same_data"]["median_s"]
        base["B1-same-data + generation"] = base["B1-same-data"] + report["generation_jax"]["run_s"]
        base["B3-same-data + generation"] = base["B3-same-data"] + report["generation_jax"]["run_s"]
    out = {}
    for n_dev in devices:
        ours = report[f"ours_{n_dev}dev"]
        first = ours["first_call"]["compile_s"] + ours["first_call"]["run_s"]
        for name, seconds in base.items():
            out[f"{name} / ours_{n_dev}dev"] = {"baseline_s": seconds, "steady": seconds / ours["steady_run_median_s"],
                                                "end_to_end": seconds / first}
    return out


if __name__ == "__main__":
    main()
