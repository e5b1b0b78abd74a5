"""Benchmark (docs/design.md §8, issue 4 "Speed"): P1's online loop with the ``optimism`` strategy, ours vs NumPy/SciPy.

Workload (defaults: the online-explore ``paper`` preset, hard setting): S seeds (default 1024); per
seed one instance (n_x=64, K=16, d=8, B=2, kl_coef=0.1, pi0 with coverage -0.8 and temperature 10)
and T + 1 = 25 rounds of the loop of ``algorithms.online.loop`` with the Gibbs main agent and the linear
BT-MLE learner (m=32, lam=1, beta = c_beta sqrt(d) with c_beta=1, at most 30 Newton steps). Round t:

    theta_t <- regularised BT-MLE on the t m comparisons so far (warm start theta_{t-1})
    Sigma_t = lam I + sum z z^T, its Cholesky factor L, Gamma(x, a) = ||phi(x, a) - nu||_{Sigma_t^{-1}}
    pi_t = Gibbs(<theta_t, phi>),  explorer = Gibbs(<theta_t, phi> + beta Gamma)      (optimism)
    m comparisons: x ~ d0, a1 ~ pi_t(.|x), a2 ~ explorer(.|x) by inverse CDF, y ~ BT(r*(a1) - r*(a2))
    exact metrics of pi_t: subopt, subopt_kl, agent_regret_kl, kl_to_ref, kl_to_ref_explorer,
    confidence_width, bound, in_confidence_set (definitions in ``algorithms.online.loop``)

Implementations
  ours  ``experiments.catalogue.online_common.per_seed`` with strategy group ("optimism",), through
        ``experiments.engine.runner.run_vectorized`` (one jitted vmapped call per chunk of seeds), exactly as
        ``online_common.run_algorithms`` calls it. Instance generation is inside its timed region.
        Run in fresh subprocesses (``--devices``): ``1`` and ``2`` = JAX_NUM_CPU_DEVICES=1 / =2 (seed axis
        sharded by run_vectorized); ``2p`` = two concurrent 1-device processes on the two halves of the
        seeds. Compile (trace + lower + compile) and run are timed separately; steady state = median
        of --repeats further calls reusing the executable. With jax/jaxlib 0.10.2 on a 2-core CPU
        sharded 2-device runs deadlocked inside batched LAPACK kernels (see README; the SPD solves
        are now plain XLA ops, ``algorithms.core.spd_solve``); a subprocess using under 2% of a core over
        --jax-idle seconds is still killed and reported as hung, and the other runs go on.
  B1    NumPy + SciPy, one seed and one round at a time: scipy L-BFGS-B (analytic gradient) warm
        started, ``np.linalg.cholesky`` + ``scipy.linalg.solve_triangular``, NumPy Gibbs policies,
        inverse-CDF sampling from the two marginals, NumPy exact metrics.
  B3    NumPy vectorised over seeds, one round at a time: batched damped Newton (``np.linalg.solve``
        on [S, d, d], ours' 12 Armijo candidates tried in order and Newton-decrement tolerance 1e-20, at most
        newton_steps iterations, only unconverged seeds iterated), batched Cholesky and solves.
B1 and B3 generate their instances with NumPy (``default_rng([root, seed])`` per seed, generation
inside their timed region), so their random streams differ from ours: the check against ours is
statistical (mean final subopt within the combined 95% interval). B1 and B3 use the SAME NumPy
seeds, so they are also compared seed by seed on B1's seeds.

Differences in work that favour the NumPy baselines (they are what a researcher would write):
ours refits on the full fixed-capacity buffer ((T + 1) m rows, masked) every round and, under vmap,
runs each Newton loop until the slowest seed of the chunk has converged; it materialises the joint
pair law [n_x, K, K] (the generic strategy interface) where B1/B3 sample the two marginals; B1/B3
store z incrementally and precompute phi - nu once per seed.

Usage (see benchmarks/README.md):
  PYTHONPATH=. python benchmarks/online_loop.py                 # full run, writes OUT/report.json
  PYTHONPATH=. python benchmarks/online_loop.py --quick         # tiny end-to-end check (8 seeds, T=4, m=16)
  PYTHONPATH=. python benchmarks/online_loop.py --part jax ...  # one JAX part (used internally)
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.offline_mle_gibbs import _logsumexp, _nll_grad, _uptime, measure_peak, statistical_check

STEPS = 2.0 ** -np.arange(12)   # ours' backtracking candidates (algorithms.core.newton)
TOL = 1e-20                     # ours' float64 Newton-decrement tolerance
STRATEGY = "optimism"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The loop's sizes and constants (hashable: keys ours' compiled executables)."""

    n_contexts: int = 64
    n_actions: int = 16
    dim: int = 8
    reward_norm: float = 2.0
    kl_coef: float = 0.1
    coverage: float = -0.8
    temperature: float = 10.0
    iterations: int = 24
    batch_size: int = 32
    lam: float = 1.0
    c_beta: float = 1.0
    newton_steps: int = 30

    @property
    def beta(self) -> float:
        return self.c_beta * math.sqrt(self.dim)          # beta_mode "sqrt_d", sum-normalised Gram

    @property
    def rounds(self) -> int:
        return self.iterations + 1

    @property
    def capacity(self) -> int:
        return self.rounds * self.batch_size


# ----------------------------------------------------------------------------------------------
# ours (JAX)
# ----------------------------------------------------------------------------------------------

def _jax():
    import jax
    jax.config.update("jax_enable_x64", True)
    return jax


def explore_config(sz: Sizes):
    """The online-explore Config of these sizes (hard setting only, strategy optimism)."""
    from experiments.catalogue import online_common as oe
    from experiments.engine.config import replace
    return replace(oe.Config(), n_contexts=sz.n_contexts, n_actions=sz.n_actions, dim=sz.dim,
                   reward_norm=sz.reward_norm, kl_coef=sz.kl_coef, settings=("hard",), hard_coverage=sz.coverage,
                   hard_temperature=sz.temperature, iterations=sz.iterations, batch_size=sz.batch_size,
                   lam=sz.lam, beta_mode="sqrt_d", c_beta=sz.c_beta, newton_steps=sz.newton_steps,
                   algorithms=(STRATEGY,))


def rng_only_per_seed(key, sz: Sizes):
    """Exactly the random draws of ``online_common.per_seed`` for one seed, reduced to one number.

    The key splits of per_seed, make_instance and run_online; the Gaussians of the instance (features
    [n_x, K, d], theta* [d], the reference direction [d]; a zero skew block draws nothing); the 4 uniforms
    of each of the (T + 1) m online comparisons, in float64, from ``bandits.comparison_uniforms``
    (counter-based Threefry, one bulk hash; the function the loop's samplers call). ``optimism`` draws
    nothing else.
    """
    import jax
    import jax.numpy as jnp
    from bandits import comparison_uniforms

    k_inst, k_run, _ = jax.random.split(key, 3)
    k_phi, k_rew, k_ref, _ = jax.random.split(k_inst, 4)
    total = jnp.sum(jax.random.normal(k_phi, (sz.n_contexts, sz.n_actions, sz.dim), jnp.float64))
    total += jnp.sum(jax.random.normal(k_rew, (sz.dim,), jnp.float64))
    total += jnp.sum(jax.random.normal(k_ref, (sz.dim,), jnp.float64))
    k_data, _, _ = jax.random.split(k_run, 3)
    return total + jnp.sum(comparison_uniforms(k_data, jnp.arange(sz.capacity), jnp.float64))


def _barrier(out: Path, name: str, tag: str, parties: int) -> None:
    """Wait until ``parties`` processes reached barrier ``name`` (concurrent runs time the same phase)."""
    if parties <= 1:
        return
    (out / f"barrier_{name}_{tag}").touch()
    while len(list(out.glob(f"barrier_{name}_*"))) < parties:
        time.sleep(0.05)


def _timed_calls(fn, keys, args, repeats, chunk, sync=lambda phase: None):
    from experiments.engine.runner import Progress, run_vectorized
    calls, res = [], None
    for r in range(1 + repeats):
        sync(f"call{r}")
        progress = Progress()
        t0 = time.perf_counter()
        res = run_vectorized(fn, keys, *args, progress=progress, chunk_size=chunk)
        wall = time.perf_counter() - t0
        rec = progress.calls[0]
        calls.append({"wall_s": wall, "compile_s": rec["compile_s"], "run_s": rec["run_s"],
                      "reused_executable": rec["reused_executable"]})
    steady = [c["run_s"] for c in calls[1:]] or [calls[0]["run_s"]]
    summary = {"first_call": calls[0], "steady_run_s": steady, "steady_run_median_s": statistics.median(steady),
               "steady_wall_median_s": statistics.median([c["wall_s"] for c in calls[1:]] or [calls[0]["wall_s"]])}
    return res, summary


def run_jax(sz: Sizes, seeds: int, start: int, repeats: int, chunk: int, out: Path, tag: str,
            parties: int = 1) -> dict:
    """Seeds ``start .. start + seeds - 1`` (``seed_keys(0, seeds, start)``), in this process's devices;
    with ``parties`` > 1 concurrent processes, every call starts when all processes are ready for it."""
    t_import = time.perf_counter()
    jax = _jax()
    from experiments.catalogue import online_common as oe
    from experiments.engine.runner import seed_keys
    t_import = time.perf_counter() - t_import
    config = explore_config(sz)
    coverage, temperature = config.setting_values("hard")
    fn = functools.partial(oe.per_seed, config=config, group=(STRATEGY,), online=config.online, offline_size=0)
    keys = jax.block_until_ready(seed_keys(0, seeds, start))
    args = (np.float64(coverage), np.float64(temperature), np.int32(0))   # as run_algorithms passes them
    res, loop = _timed_calls(fn, keys, args, repeats, chunk, lambda phase: _barrier(out, f"loop_{phase}", tag, parties))
    np.savez(out / f"jax_{tag}.npz", **res)
    _, rng = _timed_calls(functools.partial(rng_only_per_seed, sz=sz), keys, (), max(repeats, 1), chunk,
                          lambda phase: _barrier(out, f"rng_{phase}", tag, parties))
    return {"devices": len(jax.devices()), "seeds": seeds, "seed_start": start, "chunk_size": chunk,
            "import_s": t_import, "loop": loop, "rng_only": rng}


# ----------------------------------------------------------------------------------------------
# NumPy: instances and the round's work (shared by B1 and B3; leading seed axes allowed)
# ----------------------------------------------------------------------------------------------

def np_instance(sz: Sizes, seed: int, root: int = 0) -> dict:
    """One instance as ``bandits.make_instance`` builds it (linear reward, uniform d0, coverage knob),
    from NumPy's generator, plus the seed's (T + 1) m x 4 comparison uniforms."""
    rng = np.random.default_rng([root, seed])
    phi = rng.standard_normal((sz.n_contexts, sz.n_actions, sz.dim))
    phi /= np.linalg.norm(phi, axis=-1, keepdims=True)
    u = rng.standard_normal(sz.dim)
    theta_star = sz.reward_norm * u / np.linalg.norm(u)
    g = rng.standard_normal(sz.dim)
    g /= np.linalg.norm(g)
    direction = theta_star / np.linalg.norm(theta_star)
    g -= (g @ direction) * direction
    norm = np.linalg.norm(g)
    u_perp = g / norm if norm > 1e-8 else np.zeros(sz.dim)
    reward = phi @ theta_star
    logits = sz.temperature * (sz.coverage * reward / sz.reward_norm
                               + math.sqrt(1.0 - sz.coverage ** 2) * (phi @ u_perp))
    log_pi0 = logits - _logsumexp(logits)[..., None]
    uniforms = rng.random((sz.capacity, 4))
    return {"phi": phi, "theta_star": theta_star, "reward": reward, "log_pi0": log_pi0, "uniforms": uniforms}


def np_gibbs(log_pi0, reward, eta):
    logits = log_pi0 + reward / eta
    return logits - _logsumexp(logits)[..., None]


def np_kl(log_p, log_q):
    """``E_x KL(p || q)`` (uniform d0), policies [..., n_x, K] -> [...]."""
    return np.mean(np.sum(np.exp(log_p) * (log_p - log_q), -1), -1)


def np_feature_mean(phi, log_pi):
    """``phi_bar(pi) = E_x E_{a~pi} phi``, [..., d]."""
    return np.einsum("...xa,...xad->...d", np.exp(log_pi), phi) / phi.shape[-3]


def np_whiten(chol, vectors):
    """``L^{-1} v`` for ``vectors [..., N, d]`` -> ``[..., d, N]`` (one seed: a triangular solve)."""
    if chol.ndim == 2:
        from scipy.linalg import solve_triangular
        return solve_triangular(chol, vectors.T, lower=True, check_finite=False)
    return np.linalg.solve(chol, np.swapaxes(vectors, -1, -2))


def np_dual_norm(chol, vectors):
    return np.sqrt(np.sum(np_whiten(chol, vectors) ** 2, axis=-2))


def np_inverse_cdf(cdf_rows, u):
    """``min{j : F_j > u}`` on normalised CDF rows [..., K], clipped to K - 1 (``bandits.inverse_cdf``)."""
    index = np.sum(cdf_rows <= u[..., None], axis=-1)
    return np.minimum(index, cdf_rows.shape[-1] - 1)


def np_cdf(log_pi):
    cdf = np.cumsum(np.exp(log_pi), axis=-1)
    return cdf / cdf[..., -1:]


def np_seed_constants(inst, sz: Sizes) -> dict:
    """What does not change across rounds: pi*, J*, nu (pi0 reference vector), phi - nu, coverage vector."""
    phi, log_pi0, reward = inst["phi"], inst["log_pi0"], inst["reward"]
    eta = sz.kl_coef
    log_pi_star = np_gibbs(log_pi0, reward, eta)
    j_star = eta * np.mean(_logsumexp(log_pi0 + reward / eta), axis=-1)
    nu = np_feature_mean(phi, log_pi0)
    centred = (phi - nu[..., None, None, :]).reshape(phi.shape[:-3] + (-1, sz.dim))
    return {"log_pi_star": log_pi_star, "j_star": j_star, "nu": nu, "centred": centred,
            "bar_star": np_feature_mean(phi, log_pi_star),
            "coverage_vec": np_feature_mean(phi, log_pi_star) - nu}


def np_policies(inst, const, theta, chol, sz: Sizes):
    """pi_t = Gibbs(phi theta) and the optimism explorer Gibbs(phi theta + beta Gamma)."""
    r_hat = np.einsum("...xkd,...d->...xk", inst["phi"], theta)
    gamma = np_dual_norm(chol, const["centred"]).reshape(r_hat.shape)
    log_pi = np_gibbs(inst["log_pi0"], r_hat, sz.kl_coef)
    log_explorer = np_gibbs(inst["log_pi0"], r_hat + sz.beta * gamma, sz.kl_coef)
    return log_pi, log_explorer


def np_metrics(inst, const, theta, gram, chol, log_pi, log_explorer, sz: Sizes) -> dict:
    """Exact metrics of pi_t (as ``algorithms.online.loop.OnlineTrace``), for one seed or a seed stack."""
    eta, log_pi0, reward = sz.kl_coef, inst["log_pi0"], inst["reward"]
    pi = np.exp(log_pi)
    kl_ref = np_kl(log_pi, log_pi0)
    subopt = const["j_star"] - (np.mean(np.sum(pi * reward, -1), -1) - eta * kl_ref)
    diff = const["bar_star"] - np_feature_mean(inst["phi"], log_pi)
    vectors = np.stack([const["coverage_vec"], diff], axis=-2)            # [..., 2, d]
    norms = np_dual_norm(chol, vectors)
    dev = theta - inst["theta_star"]
    in_cs = np.sqrt(np.maximum(np.einsum("...d,...de,...e->...", dev, gram, dev), 0.0)) <= sz.beta
    return {"subopt": subopt, "subopt_kl": subopt + eta * np_kl(const["log_pi_star"], log_pi),
            "kl_to_ref": kl_ref, "kl_to_ref_explorer": np_kl(log_explorer, log_pi0),
            "confidence_width": sz.beta * norms[..., 0], "bound": sz.beta * norms[..., 1],
            "in_confidence_set": in_cs.astype(float)}


METRICS = ("subopt", "subopt_kl", "agent_regret_kl", "kl_to_ref", "kl_to_ref_explorer", "confidence_width", "bound",
           "in_confidence_set")


# ----------------------------------------------------------------------------------------------
# B1: NumPy + SciPy, one seed and one round at a time
# ----------------------------------------------------------------------------------------------

def b1_seed(sz: Sizes, seed: int, gtol: float) -> tuple[dict, list]:
    from scipy.optimize import minimize
    from scipy.special import expit
    inst = np_instance(sz, seed)
    const = np_seed_constants(inst, sz)
    m, d = sz.batch_size, sz.dim
    phi, reward, uniforms = inst["phi"], inst["reward"], inst["uniforms"]
    context_cdf = np.arange(1, sz.n_contexts + 1) / sz.n_contexts      # uniform d0
    z_buf, y_buf = np.zeros((sz.capacity, d)), np.zeros(sz.capacity)
    theta, regret = np.zeros(d), 0.0
    trace = {k: np.zeros(sz.rounds) for k in METRICS}
    nit = []
    for t in range(sz.rounds):
        n = t * m
        z, y = z_buf[:n], y_buf[:n]
        if n:
            res = minimize(_nll_grad, theta, args=(z, y, 2.0 * y - 1.0, sz.lam), jac=True, method="L-BFGS-B",
                           options={"gtol": gtol, "ftol": 1e-15, "maxiter": 1000, "maxcor": 10})
            theta = res.x
            nit.append(int(res.nit))
        gram = sz.lam * np.eye(d) + z.T @ z
        chol = np.linalg.cholesky(gram)
        log_pi, log_explorer = np_policies(inst, const, theta, chol, sz)
        u = uniforms[n:n + m]
        x = np.minimum(np.searchsorted(context_cdf, u[:, 0], side="right"), sz.n_contexts - 1)
        a1 = np_inverse_cdf(np_cdf(log_pi)[x], u[:, 1])
        a2 = np_inverse_cdf(np_cdf(log_explorer)[x], u[:, 2])
        y_new = u[:, 3] < expit(reward[x, a1] - reward[x, a2])
        z_buf[n:n + m] = phi[x, a1] - phi[x, a2]
        y_buf[n:n + m] = y_new
        rec = np_metrics(inst, const, theta, gram, chol, log_pi, log_explorer, sz)
        rec["agent_regret_kl"] = regret
        regret += m * rec["subopt_kl"]
        for k in METRICS:
            trace[k][t] = rec[k]
    return trace, nit


def _import_scipy():
    """Import SciPy's pieces before timing (a researcher's session has them loaded)."""
    import scipy.linalg
    import scipy.optimize
    import scipy.special  # noqa: F401


def run_b1(sz: Sizes, seed_ids, gtol: float):
    _import_scipy()
    t0 = time.perf_counter()
    traces, nits = [], []
    for s in seed_ids:
        trace, nit = b1_seed(sz, int(s), gtol)
        traces.append(trace)
        nits.append(nit)
    seconds = time.perf_counter() - t0
    stacked = {k: np.stack([tr[k] for tr in traces]) for k in METRICS}
    return stacked, np.asarray(nits), seconds


# ----------------------------------------------------------------------------------------------
# B3: NumPy vectorised over seeds, one round at a time
# ----------------------------------------------------------------------------------------------

def batched_newton(z, y, theta, lam, max_iter):
    """Damped Newton on the regularised BT NLL for a stack of seeds (z [S, n, d], y [S, n], theta [S, d]);
    ours' candidates, Armijo test with slack, decrement tolerance; only unconverged seeds iterate.
    Returns (theta, iterations [S])."""
    from scipy.special import expit
    S, _, d = z.shape
    theta = theta.copy()
    iters = np.zeros(S, int)
    eye = np.eye(d)
    eps = np.finfo(np.float64).eps
    sgn_all = 2.0 * y - 1.0
    active = np.arange(S)
    for _ in range(max_iter):
        if not active.size:
            break
        zs, ys, sgn, th = z[active], y[active], sgn_all[active], theta[active]
        u = np.einsum("snd,sd->sn", zs, th)
        p = expit(u)
        g = np.einsum("snd,sn->sd", zs, p - ys) + lam * th
        h = np.matmul(np.swapaxes(zs * (p * (1.0 - p))[..., None], 1, 2), zs) + lam * eye
        direction = -np.linalg.solve(h, g[..., None])[..., 0]
        decrement = -0.5 * np.sum(g * direction, -1)
        f0 = np.sum(np.logaddexp(0.0, -sgn * u), -1) + 0.5 * lam * np.sum(th * th, -1)
        v = np.einsum("snd,sd->sn", zs, direction)
        slack = 64.0 * eps * np.abs(f0)
        step = np.zeros(active.size)
        found = np.zeros(active.size, bool)
        for c in STEPS:
            pending = ~found
            if not pending.any():
                break
            th_c = th[pending] + c * direction[pending]
            fc = np.sum(np.logaddexp(0.0, -sgn[pending] * (u[pending] + c * v[pending])), -1) + \
                0.5 * lam * np.sum(th_c * th_c, -1)
            ok = fc <= f0[pending] - 0.5 * c * decrement[pending] + slack[pending]
            idx = np.flatnonzero(pending)[ok]
            step[idx], found[idx] = c, True
        theta[active] = th + step[:, None] * direction
        iters[active] += 1
        active = active[(decrement > TOL) & (step != 0.0)]
    return theta, iters


def run_b3(sz: Sizes, seed_ids):
    """All rounds for the seeds ``seed_ids`` at once; returns (trace {metric: [S, T + 1]}, Newton
    iterations [S, T + 1], seconds, generation seconds)."""
    from scipy.special import expit
    _import_scipy()
    t0 = time.perf_counter()
    parts = [np_instance(sz, int(s)) for s in seed_ids]    # per-seed generators: seed i's stream is B1's
    inst = {k: np.stack([p[k] for p in parts]) for k in parts[0]}
    del parts
    t_gen = time.perf_counter() - t0
    const = np_seed_constants(inst, sz)
    S, m, d = len(seed_ids), sz.batch_size, sz.dim
    rows = np.arange(S)[:, None]
    phi, reward, uniforms = inst["phi"], inst["reward"], inst["uniforms"]
    context_cdf = np.arange(1, sz.n_contexts + 1) / sz.n_contexts
    z_buf, y_buf = np.zeros((S, sz.capacity, d)), np.zeros((S, sz.capacity))
    theta, regret = np.zeros((S, d)), np.zeros(S)
    trace = {k: np.zeros((S, sz.rounds)) for k in METRICS}
    iters = np.zeros((S, sz.rounds), int)
    for t in range(sz.rounds):
        n = t * m
        z, y = z_buf[:, :n], y_buf[:, :n]
        if n:
            theta, iters[:, t] = batched_newton(z, y, theta, sz.lam, sz.newton_steps)
        gram = sz.lam * np.eye(d) + np.matmul(np.swapaxes(z, 1, 2), z)
        chol = np.linalg.cholesky(gram)
        log_pi, log_explorer = np_policies(inst, const, theta, chol, sz)
        u = uniforms[:, n:n + m]
        x = np.minimum(np.searchsorted(context_cdf, u[..., 0], side="right"), sz.n_contexts - 1)
        a1 = np_inverse_cdf(np_cdf(log_pi)[rows, x], u[..., 1])
        a2 = np_inverse_cdf(np_cdf(log_explorer)[rows, x], u[..., 2])
        y_new = u[..., 3] < expit(reward[rows, x, a1] - reward[rows, x, a2])
        z_buf[:, n:n + m] = phi[rows, x, a1] - phi[rows, x, a2]
        y_buf[:, n:n + m] = y_new
        rec = np_metrics(inst, const, theta, gram, chol, log_pi, log_explorer, sz)
        rec["agent_regret_kl"] = regret.copy()
        regret += m * rec["subopt_kl"]
        for k in METRICS:
            trace[k][:, t] = rec[k]
    return trace, iters, time.perf_counter() - t0, t_gen


# ----------------------------------------------------------------------------------------------
# machine limit: work model (useful work, from B3's Newton iteration counts)
# ----------------------------------------------------------------------------------------------

def work_model(sz: Sizes, newton_iters, seeds: int):
    """FLOPs and bytes of the loop's useful work for ``seeds`` seeds (lower bounds).

    ``newton_iters [S', T + 1]``: Newton iterations per (seed, round) of B3 (same algorithm and
    tolerance as ours), scaled by seeds / S'. Per Newton iteration on n = t m rows (the offline
    benchmark's count): 2nd (u) + 2nd (gradient) + nd + 2nd^2 (Hessian) + d^3/3 + 2d^2 (Cholesky,
    solves) + 2nd + 2n (one line-search trial: the full step, accepted near the optimum; f is carried)
    + 2n. Per round: Gram 2nd^2 + d^3/3;
    r_hat 2 n_x K d; Gamma n_x K (d^2 + 2d + 1) (triangular solve); two Gibbs policies 10 n_x K;
    sampling 4 m K + 4 m d; metrics 20 n_x K + 2 n_x K d + 4 d^2. Per seed: instance (normalise,
    reward, xi) 7 n_x K d + 10 n_x K, pi*, nu and phi_bar(pi*) 4 n_x K d + 10 n_x K, phi - nu n_x K d.
    Bytes: z and y read once per Newton iteration, 8 n (d + 1); phi read 3 times per round,
    8 n_x K d each (perfect fusion, nothing else re-read).
    """
    d, nx, k, m = sz.dim, sz.n_contexts, sz.n_actions, sz.batch_size
    iters = np.asarray(newton_iters, float).sum(0) * seeds / max(np.asarray(newton_iters).shape[0], 1)
    flops = bytes_ = 0.0
    for t in range(sz.rounds):
        n = t * m
        per_iter = (2 * n * d + 2 * n * d + n * d + 2 * n * d * d + d ** 3 / 3 + 2 * d * d
                    + (2 * n * d + 2 * n) + 2 * n)
        per_round = (2 * n * d * d + d ** 3 / 3 + 2 * nx * k * d + nx * k * (d * d + 2 * d + 1) + 10 * nx * k
                     + 4 * m * k + 4 * m * d + 20 * nx * k + 2 * nx * k * d + 4 * d * d)
        flops += iters[t] * per_iter + seeds * per_round
        bytes_ += iters[t] * 8 * n * (d + 1) + seeds * 3 * 8 * nx * k * d
    flops += seeds * (12 * nx * k * d + 20 * nx * k)
    return flops, bytes_


# ----------------------------------------------------------------------------------------------
# statistics, machine description, driver
# ----------------------------------------------------------------------------------------------

def machine_description() -> dict:
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
                                  ).stdout.strip()
        except OSError:
            return ""
    lscpu = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
             for line in run(["lscpu"]).splitlines() if ":" in line}
    meminfo = Path("/proc/meminfo").read_text().splitlines()[0] if Path("/proc/meminfo").exists() else ""
    import scipy
    versions = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__}
    try:
        import jax
        import jaxlib
        versions.update(jax=jax.__version__, jaxlib=jaxlib.__version__)
    except ImportError:
        pass
    return {"cpu": lscpu.get("Model name", platform.processor()), "cpus": os.cpu_count(),
            "threads_per_core": lscpu.get("Thread(s) per core"), "l2": lscpu.get("L2 cache"),
            "l3": lscpu.get("L3 cache"), "mem_total": meminfo.split(":", 1)[-1].strip(),
            "platform": platform.platform(), "versions": versions,
            "git_head": run(["git", "rev-parse", "HEAD"]),
            "git_dirty": run(["git", "status", "--porcelain", "--untracked-files=no"]).splitlines(),
            "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                   "MKL_NUM_THREADS", "JAX_NUM_CPU_DEVICES")}}


def _size_args(sz: Sizes) -> list[str]:
    out = []
    for f in dataclasses.fields(Sizes):
        out += [f"--{f.name.replace('_', '-')}", str(getattr(sz, f.name))]
    return out


def _launch_jax(sz, seeds, start, repeats, out, devices, chunk, tag, parties=1):
    env = dict(os.environ)
    env["JAX_NUM_CPU_DEVICES"] = str(devices)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    cmd = [sys.executable, __file__, "--part", "jax", "--seeds", str(seeds), "--seed-start", str(start),
           "--tag", tag, "--parties", str(parties), "--repeats", str(repeats), "--out", str(out),
           "--chunk-size", str(chunk), *_size_args(sz)]
    return subprocess.Popen(cmd, env=env)


def _cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])          # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def _wait(procs, timeout: float, idle: float) -> str:
    """Wait for the processes; "ok", or why not: a non-zero exit, ``timeout`` seconds in total, or
    under 2% of a core used over the last ``idle`` seconds (a deadlocked process sleeps, bar a
    background thread's tick now and then; see README on 2 sharded devices)."""
    start = time.monotonic()
    hz = os.sysconf("SC_CLK_TCK")
    history = {p.pid: [(start, _cpu_ticks(p.pid))] for p in procs}
    while True:
        codes = [p.poll() for p in procs]
        if any(c not in (None, 0) for c in codes):
            return f"failed (exit codes {codes})"
        if all(c == 0 for c in codes):
            return "ok"
        now = time.monotonic()
        if now - start > timeout:
            return f"timeout: still running after {timeout:.0f} s (killed)"
        for p, c in zip(procs, codes):
            ticks = _cpu_ticks(p.pid)
            if c is not None or ticks is None:
                continue
            seen = history[p.pid]
            seen.append((now, ticks))
            while len(seen) > 1 and now - seen[1][0] >= idle:
                seen.pop(0)
            first_t, first_ticks = seen[0]
            if first_ticks is not None and now - first_t >= idle and (ticks - first_ticks) / hz < 0.02 * idle:
                return (f"hung: {(ticks - first_ticks) / hz:.2f} s of CPU in the last {now - first_t:.0f} s, "
                        f"after {now - start:.0f} s (killed; all threads waiting: the sharded-CPU deadlock "
                        "described in benchmarks/README.md)")
        time.sleep(2.0)


def run_jax_mode(mode: str, sz: Sizes, seeds: int, repeats: int, out: Path, chunk: int, timeout: float,
                 idle: float):
    """Ours in fresh subprocesses: mode ``N`` = one process with JAX_NUM_CPU_DEVICES=N (seed axis sharded
    by run_vectorized); ``2p`` = two concurrent 1-device processes on disjoint halves of the seeds
    (run_vectorized's several-processes mode), times = max over the two. Returns (report, arrays or None);
    a process that fails, runs longer than ``timeout`` or uses no CPU for ``idle`` seconds is killed and
    the reason reported."""
    if mode == "2p":
        half = (seeds + 1) // 2
        specs = [(half, 0, "2p_0"), (seeds - half, half, "2p_1")]
        devices, chunk = 1, max(1, (chunk + 1) // 2)
    else:
        specs, devices = [(seeds, 0, f"{mode}dev")], int(mode)
    for stale in out.glob("barrier_*"):
        stale.unlink()
    procs = [_launch_jax(sz, n, start, repeats, out, devices, chunk, tag, len(specs)) for n, start, tag in specs]
    status = _wait(procs, timeout, idle)
    if status != "ok":
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return {"status": status, "mode": mode}, None
    parts = [json.loads((out / f"jax_{tag}.json").read_text()) for _, _, tag in specs]
    arrays = [dict(np.load(out / f"jax_{tag}.npz")) for _, _, tag in specs]
    if len(parts) == 1:
        return {"status": "ok", "mode": mode, **parts[0]}, arrays[0]

    def worst(key):
        calls = [p[key] for p in parts]
        return {"first_call": {k: max(c["first_call"][k] for c in calls) for k in ("wall_s", "compile_s", "run_s")},
                "steady_run_s": [c["steady_run_s"] for c in calls],
                "steady_run_median_s": max(c["steady_run_median_s"] for c in calls)}
    merged = {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}
    return {"status": "ok", "mode": mode, "devices": 2, "processes": parts,
            "import_s": max(p["import_s"] for p in parts),
            "loop": worst("loop"), "rng_only": worst("rng_only"),
            "note": "two concurrent 1-device processes, half the seeds each, every call started together "
                    "(file barrier); times are the max over the two"}, merged


def _seed_subset(rng, pool, size):
    return np.sort(rng.choice(pool, size=min(size, len(pool)), replace=False))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", default="all", choices=["all", "jax"])
    ap.add_argument("--quick", action="store_true", help="tiny end-to-end check: --seeds 8 --iterations 4 "
                    "--batch-size 16 --repeats 1 --b1-subsets 4,8 (explicit flags still win)")
    ap.add_argument("--seeds", type=int, default=None, help="default 1024 (8 with --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="steady-state calls of ours and runs of B3 "
                    "(median); default 3 (1 with --quick)")
    ap.add_argument("--devices", default="1,2,2p", help="ours' runs: N = one subprocess with "
                    "JAX_NUM_CPU_DEVICES=N (seed axis sharded); 2p = two concurrent 1-device subprocesses on "
                    "halves of the seeds")
    ap.add_argument("--jax-timeout", type=float, default=None, help="seconds before a JAX subprocess is "
                    "killed; default 7200 (600 with --quick)")
    ap.add_argument("--jax-idle", type=float, default=60.0, help="a JAX subprocess that uses under 2%% of a "
                    "core over this many seconds is declared hung and killed")
    ap.add_argument("--seed-start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--tag", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--parties", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--chunk-size", type=int, default=None, help="seeds per compiled call of ours and of "
                    "RNG-only (memory: ours needs ~2.7 MB per seed at the default sizes); default 256 "
                    "(all seeds with --quick)")
    ap.add_argument("--b1-subsets", default=None, help="sizes of random seed subsets timed for B1, "
                    "extrapolated linearly to all seeds; default 8,16 (4,8 with --quick)")
    ap.add_argument("--b1-gtol", type=float, default=1e-10)
    ap.add_argument("--b3-seeds", type=int, default=None, help="seeds run by B3 (default all; fewer: "
                    "extrapolated linearly)")
    ap.add_argument("--skip-limits", action="store_true", help="skip the peak FLOP/s and bandwidth measurement")
    ap.add_argument("--out", default="/tmp/rlhf_bench_online")
    defaults = Sizes()
    for f in dataclasses.fields(Sizes):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)), default=None)
    args = ap.parse_args(argv)
    preset = ({"seeds": 8, "iterations": 4, "batch_size": 16, "repeats": 1, "b1_subsets": "4,8", "jax_timeout": 600.0}
              if args.quick else {"seeds": 1024, "repeats": 3, "b1_subsets": "8,16", "jax_timeout": 7200.0,
                 "chunk_size": 256})
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    sz = Sizes(**{f.name: getattr(args, f.name) if getattr(args, f.name) is not None else getattr(defaults, f.name)
                  for f in dataclasses.fields(Sizes)})
    chunk = args.chunk_size or args.seeds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.part == "jax":
        tag = args.tag or f"{os.environ.get('JAX_NUM_CPU_DEVICES', '1')}dev"
        res = run_jax(sz, args.seeds, args.seed_start, args.repeats, chunk, out, tag, args.parties)
        (out / f"jax_{tag}.json").write_text(json.dumps(res, indent=1))
        return

    report = {"sizes": dataclasses.asdict(sz), "seeds": args.seeds, "strategy": STRATEGY, "chunk_size": chunk,
              "machine": machine_description(), "uptime_before": _uptime()}
    print("sizes:", report["sizes"], "seeds:", args.seeds, flush=True)
    print("machine:", json.dumps({k: report["machine"][k] for k in ("cpu", "cpus", "mem_total", "versions",
                                                                    "git_head")}), flush=True)
    print("uptime:", report["uptime_before"], flush=True)

    modes = [x.strip() for x in args.devices.split(",") if x.strip()]
    for mode in modes:
        if mode != "2p" and not mode.isdigit():
            ap.error(f"--devices: {mode!r} is not allowed: give device counts (e.g. 1,2) or 2p")
    label = {mode: "2p" if mode == "2p" else f"{mode}dev" for mode in modes}
    jax_runs = {}
    for mode in modes:
        res, arrays = run_jax_mode(mode, sz, args.seeds, args.repeats, out, chunk, args.jax_timeout, args.jax_idle)
        report[f"jax_{label[mode]}"] = res
        report[f"uptime_after_jax_{label[mode]}"] = _uptime()
        if arrays is None:
            print(f"ours, {label[mode]}: {res['status']}", flush=True)
            continue
        jax_runs[label[mode]] = arrays
        loop, rng = res["loop"], res["rng_only"]
        print(f"ours, {label[mode]}: import {res['import_s']:.2f} s, compile {loop['first_call']['compile_s']:.2f} s, "
              f"first run {loop['first_call']['run_s']:.3f} s, steady run median {loop['steady_run_median_s']:.3f} s "
              f"{loop['steady_run_s']}; RNG-only run median {rng['steady_run_median_s']:.4f} s "
              f"(compile {rng['first_call']['compile_s']:.2f} s)", flush=True)
    if not jax_runs:
        raise SystemExit("no JAX run finished; nothing to compare")

    rng = np.random.default_rng(1)
    b3_ids = np.arange(args.b3_seeds or args.seeds)
    b3_times, b3_gen = [], []
    for _ in range(args.repeats):
        b3_trace, b3_iters, seconds, gen = run_b3(sz, b3_ids)
        b3_times.append(seconds)
        b3_gen.append(gen)
        print(f"B3 ({len(b3_ids)} seeds): {seconds:.3f} s (of which NumPy generation {gen:.3f} s)", flush=True)
    b3_median = statistics.median(b3_times)
    report["b3"] = {"seeds": len(b3_ids), "runs_s": b3_times, "generation_s": b3_gen, "median_s": b3_median,
                    "extrapolated_s": b3_median / len(b3_ids) * args.seeds,
                    "newton_iterations_mean_per_round": b3_iters.mean(0).tolist(),
                    "newton_iterations_max_per_round": b3_iters.max(0).tolist()}

    b1 = []
    for size in [int(s) for s in args.b1_subsets.split(",")]:
        ids = _seed_subset(rng, b3_ids, size)
        trace, nit, seconds = run_b1(sz, ids, args.b1_gtol)
        b1.append({"size": len(ids), "seconds": seconds, "per_seed_s": seconds / len(ids),
                   "extrapolated_s": seconds / len(ids) * args.seeds, "lbfgs_iterations_mean": float(nit.mean()),
                   "ids": ids, "trace": trace})
        print(f"B1 ({len(ids)} seeds): {seconds:.3f} s -> {seconds / len(ids) * args.seeds:.2f} s for "
              f"{args.seeds} seeds (linear extrapolation)", flush=True)
    report["b1"] = [{k: v for k, v in r.items() if k not in ("ids", "trace")} for r in b1]
    b1_main = b1[-1]

    # agreement: statistical (different RNG streams), and seed by seed where the streams are the same
    ref_dev = next(iter(jax_runs))
    ours = jax_runs[ref_dev]
    checks = [statistical_check(f"ours_{ref_dev}", ours["subopt"][:, -1], "B3", b3_trace["subopt"][:, -1]),
              statistical_check(f"ours_{ref_dev}", ours["subopt"][:, -1], f"B1[{b1_main['size']}]",
                                b1_main["trace"]["subopt"][:, -1]),
              statistical_check(f"ours_{ref_dev}", ours["subopt_kl"][:, -1], "B3 (subopt_kl)",
                                b3_trace["subopt_kl"][:, -1]),
              statistical_check(f"ours_{ref_dev}", ours["kl_to_ref"][:, -1], "B3 (kl_to_ref)",
                                b3_trace["kl_to_ref"][:, -1]),
              statistical_check(f"ours_{ref_dev}", ours["agent_regret_kl"][:, -1], "B3 (agent_regret_kl)",
                                b3_trace["agent_regret_kl"][:, -1])]
    pos = np.searchsorted(b3_ids, b1_main["ids"])
    agreement = {"final_subopt": checks[:2], "other_final_metrics": checks[2:],
                 "b1_vs_b3_same_seeds_max_abs": {k: float(np.max(np.abs(b1_main["trace"][k] - b3_trace[k][pos])))
                                                 for k in METRICS}}
    agreement["ours_runs_vs_first_max_abs_subopt"] = {
        name: float(np.max(np.abs(arrays["subopt"] - ours["subopt"]))) for name, arrays in jax_runs.items()}
    agreement["pass"] = all(c["consistent"] for c in checks[:2])
    report["agreement"] = agreement
    report["mean_curves"] = {"ours_subopt": ours["subopt"].mean(0).tolist(),
                             "b3_subopt": b3_trace["subopt"].mean(0).tolist(),
                             "b1_subopt": b1_main["trace"]["subopt"].mean(0).tolist(),
                             "ours_in_confidence_set": ours["in_confidence_set"].mean(0).tolist(),
                             "b3_in_confidence_set": b3_trace["in_confidence_set"].mean(0).tolist()}
    print("agreement (mean final value, 95% CI; different RNG streams, so a two-sample check at 5%):")
    for c in checks:
        print(f"  {c['a']} {c['mean_a']:.5g} +- {c['ci95_a']:.2g} (n={c['n_a']})  vs  {c['b']} {c['mean_b']:.5g} "
              f"+- {c['ci95_b']:.2g} (n={c['n_b']}): diff {c['diff']:+.3g}, combined +-{c['combined_ci']:.2g} "
              f"-> {'consistent' if c['consistent'] else 'NOT consistent'}")
    print("  B1 vs B3 on the same NumPy seeds, max abs difference:",
          {k: f"{v:.2g}" for k, v in agreement["b1_vs_b3_same_seeds_max_abs"].items()})
    print(f"  ours, each run vs ours_{ref_dev} (same seed keys), max abs subopt difference:",
          agreement["ours_runs_vs_first_max_abs_subopt"])
    print("  mean subopt curve, ours:", np.round(ours["subopt"].mean(0), 5).tolist())
    print("  mean subopt curve, B3:  ", np.round(b3_trace["subopt"].mean(0), 5).tolist(), flush=True)

    # speed-ups (targets from issue 4, reported, never asserted)
    b1_s, b3_s = b1_main["extrapolated_s"], report["b3"]["extrapolated_s"]
    speedups = {}
    for dev in jax_runs:
        loop = report[f"jax_{dev}"]["loop"]
        steady, first = loop["steady_run_median_s"], loop["first_call"]["compile_s"] + loop["first_call"]["run_s"]
        speedups[dev] = {
            "b1_over_ours_steady": b1_s / steady, "b3_over_ours_steady": b3_s / steady,
            "b1_over_ours_end_to_end": b1_s / first, "b3_over_ours_end_to_end": b3_s / first,
            "target_b1_steady": 10.0, "target_b3_steady": 3.0,
            "met_b1": b1_s / steady >= 10.0, "met_b3": b3_s / steady >= 3.0}
        s = speedups[dev]
        print(f"speed-up, ours {dev}, steady state: B1/ours {s['b1_over_ours_steady']:.2f}x "
              f"(target >= 10x: {'met' if s['met_b1'] else 'not met'}), B3/ours {s['b3_over_ours_steady']:.2f}x "
              f"(target >= 3x: {'met' if s['met_b3'] else 'not met'}); end to end (compile + first run): "
              f"B1/ours {s['b1_over_ours_end_to_end']:.2f}x, B3/ours {s['b3_over_ours_end_to_end']:.2f}x", flush=True)
    report["speedups"] = speedups

    # fraction of the machine's limit (docs/design.md §8)
    flops, bytes_ = work_model(sz, b3_iters, args.seeds)
    limits = {"flops": flops, "bytes": bytes_}
    if not args.skip_limits:
        peak = measure_peak()
        limits.update(peak)
        limits["flops_s"] = flops / max(peak["numpy_matmul_flops"], peak["jax_matmul_flops"])
        limits["bytes_s"] = bytes_ / peak["copy_bandwidth_Bps"]
    for dev in jax_runs:
        res = report[f"jax_{dev}"]
        rng_s, steady = res["rng_only"]["steady_run_median_s"], res["loop"]["steady_run_median_s"]
        t_limit = max(rng_s, limits.get("flops_s", 0.0), limits.get("bytes_s", 0.0))
        limits[dev] = {"rng_only_s": rng_s, "t_limit_s": t_limit, "rng_only_fraction": rng_s / steady,
                               "limit_fraction": t_limit / steady}
        print(f"limit, ours {dev}: RNG-only {rng_s:.4f} s = {rng_s / steady:.3f} of ours' steady run; "
              f"t_limit = max(FLOPs/peak {limits.get('flops_s', float('nan')):.4f} s, bytes/bandwidth "
              f"{limits.get('bytes_s', float('nan')):.4f} s, RNG-only) = {t_limit:.4f} s -> fraction "
              f"{t_limit / steady:.3f}", flush=True)
    report["limits"] = limits
    report["uptime_after"] = _uptime()
    print("uptime:", report["uptime_after"], flush=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    print("wrote", out / "report.json")


if __name__ == "__main__":
    main()
