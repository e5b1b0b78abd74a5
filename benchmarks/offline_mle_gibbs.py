"""Benchmark (docs/design.md §8, issue 3 "Speed"): the offline-rate MLE-Gibbs sweep, ours vs NumPy/SciPy.

Workload: S seeds (default 1024) x 9 sample sizes n = 64..16384 (doubling); d=8, K=32, n_x=128, B=2,
kl_coef=1, lam=1, uniform pi0, float64. Per seed: instance, one pi0-vs-pi0 comparison stream of
16384, BT-MLE warm-started along the nested prefixes, Gibbs policy of the fitted reward, exact
suboptimality J(pi*) - J(pi_hat).

Implementations
  ours  the JAX engine: ``run_vectorized`` of a per-seed function doing the MLE-Gibbs path of
        ``experiments/offline_rate.per_seed`` (generation of instance and stream INCLUDED in its time).
  B1    NumPy + SciPy, one seed and one n at a time: ``scipy.optimize.minimize(method="L-BFGS-B")``
        with analytic gradient, warm-started across n; exact evaluation in NumPy.
  B3    NumPy vectorised over seeds: batched damped Newton (``np.linalg.cholesky`` + solves on
        [S, d, d] stacks, Armijo backtracking over the same 12 candidates tried in order, Newton-decrement
        tolerance 1e-20 as ours).
B1 and B3 fit the SAME instances and data, generated once by our JAX code and converted to NumPy;
that generation is NOT in B1/B3's timed region (it is timed separately and reported).

Usage (see benchmarks/README.md):
  PYTHONPATH=. python benchmarks/offline_mle_gibbs.py                 # everything, writes JSON
  PYTHONPATH=. python benchmarks/offline_mle_gibbs.py --part ours     # one part (used internally)
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
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


def run_b1(data, seed_ids, gtol: float):
    from scipy.optimize import minimize
    subopt = np.zeros((len(seed_ids), len(SAMPLE_SIZES)))
    thetas = np.zeros((len(seed_ids), len(SAMPLE_SIZES), D))
    nit = np.zeros((len(seed_ids), len(SAMPLE_SIZES)), int)
    t0 = time.perf_counter()
    for i, s_id in enumerate(seed_ids):
        z_all, y_all = data["z"][s_id], data["y"][s_id]
        phi, log_pi0, reward = data["phi"][s_id], data["log_pi0"][s_id], data["reward"][s_id]
        theta = np.zeros(D)
        for j, n in enumerate(SAMPLE_SIZES):
            z, y = z_all[:n], y_all[:n]
            res = minimize(_nll_grad, theta, args=(z, y, 2.0 * y - 1.0, LAM), jac=True, method="L-BFGS-B",
                           options={"gtol": gtol, "ftol": 1e-15, "maxiter": 1000, "maxcor": 10})
            theta = res.x
            thetas[i, j], nit[i, j] = theta, res.nit
            subopt[i, j] = np_subopt(phi, log_pi0, reward, theta)
    return subopt, thetas, nit, time.perf_counter() - t0


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


def measure_rng_only(seeds: int, chunk: int, repeats=3):
    """Time of JAX generating exactly the random draws of the sweep, and nothing else.

    Per seed: the key splits of make_instance and of the stream, the Gaussian features [n_x, K, d],
    theta* and the reference direction [d] each, and per comparison the four uniforms that
    ``bandits.data`` draws from ``fold_in(key, i)`` (context, two actions, label). Reduced to one
    number per seed so nothing is dead code.
    """
    jax = _jax()
    import jax.numpy as jnp
    from experiments.engine.runner import seed_keys

    def one(key):
        k_inst, k_data = jax.random.split(key)
        k_phi, k_rew, k_ref, _ = jax.random.split(k_inst, 4)
        total = jnp.sum(jax.random.normal(k_phi, (NX, K, D)))
        total += jnp.sum(jax.random.normal(k_rew, (D,))) + jnp.sum(jax.random.normal(k_ref, (D,)))

        def comp(i):
            return jnp.sum(jax.random.uniform(jax.random.fold_in(k_data, i), (4,)))
        return total + jnp.sum(jax.vmap(comp)(jnp.arange(SAMPLE_SIZES[-1])))

    keys = seed_keys(0, seeds)
    f = jax.jit(jax.vmap(one)).lower(keys[:chunk]).compile()
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="all", choices=["all", "ours"])
    ap.add_argument("--seeds", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--b1-subsets", default="64,128", help="sizes of random seed subsets timed for B1; "
                    "'all' runs every seed")
    ap.add_argument("--b1-gtol", type=float, default=1e-10)
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--out", default="/tmp/rlhf_bench")
    ap.add_argument("--chunk-size", type=int, default=64, help="seeds per compiled call (memory: the "
                    "engine's data sampling needs ~40 MB per seed); same chunks for generation and RNG-only")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.part == "ours":
        res = run_ours(args.seeds, args.repeats, out, args.chunk_size)
        (out / f"ours_{res['devices']}dev.json").write_text(json.dumps(res, indent=1))
        return

    report = {"seeds": args.seeds, "uptime_before": _uptime()}
    print("uptime:", report["uptime_before"], flush=True)
    # ours, fresh processes (the first call includes tracing + compilation)
    report["ours_1dev"] = _subprocess_part("ours", args.seeds, args.repeats, out, 1, args.chunk_size)
    print("ours 1 device:", json.dumps(report["ours_1dev"]), flush=True)
    report["uptime_after_ours"] = _uptime()
    report["ours_2dev"] = _subprocess_part("ours", args.seeds, args.repeats, out, 2, args.chunk_size)
    print("ours 2 devices:", json.dumps(report["ours_2dev"]), flush=True)

    data, gen = generate_numpy_data(args.seeds, args.chunk_size)
    report["generation_jax"] = gen
    print("generation (JAX, for B1/B3):", gen, flush=True)
    ours = dict(np.load(out / "ours_1dev.npz"))
    ours2 = dict(np.load(out / "ours_2dev.npz"))

    # B3, median of repeats
    b3_times = []
    for _ in range(args.repeats):
        b3_sub, b3_theta, b3_it, t = run_b3(data)
        b3_times.append(t)
        print(f"B3 run: {t:.2f} s", flush=True)
    report["b3"] = {"runs_s": b3_times, "median_s": statistics.median(b3_times),
                    "iterations_sum": b3_it.sum(0).tolist()}

    # B1: random subsets (or all), extrapolated linearly in the number of seeds
    rng = np.random.default_rng(1)
    subsets = [args.seeds] if args.b1_subsets == "all" else [int(s) for s in args.b1_subsets.split(",")]
    b1 = []
    for size in subsets:
        ids = np.sort(rng.choice(args.seeds, size=size, replace=False))
        sub, th, nit, t = run_b1(data, ids, args.b1_gtol)
        b1.append({"size": size, "seconds": t, "per_seed_s": t / size,
                   "extrapolated_s": t / size * args.seeds, "ids": ids, "subopt": sub, "theta": th,
                   "nit_mean": nit.mean(0).tolist()})
        print(f"B1 {size} seeds: {t:.2f} s -> {t / size * args.seeds:.1f} s for {args.seeds}", flush=True)
    report["b1"] = [{k: v for k, v in r.items() if k not in ("ids", "subopt", "theta")} for r in b1]

    # agreement, seed by seed
    def rel(a, b_):
        return float(np.max(np.abs(a - b_) / np.maximum(np.abs(b_), 1e-300)))
    agree = {"ours_vs_b3_rel": rel(b3_sub, ours["subopt"]),
             "ours_1dev_vs_2dev_maxabs": float(np.max(np.abs(ours["subopt"] - ours2["subopt"]))),
             "ours_vs_b3_theta_maxabs": float(np.max(np.abs(b3_theta - ours["theta"]))),
             "ours_vs_b3_iterations_equal_frac": float(np.mean(b3_it == ours["iterations"]))}
    for r in b1:
        agree[f"ours_vs_b1[{r['size']}]_rel"] = rel(r["subopt"], ours["subopt"][r["ids"]])
        agree[f"ours_vs_b1[{r['size']}]_theta_maxabs"] = float(np.max(np.abs(r["theta"] - ours["theta"][r["ids"]])))
    agree["rtol"] = args.rtol
    agree["pass"] = all(v <= args.rtol for k, v in agree.items() if k.endswith("_rel"))
    report["agreement"] = agree
    report["mean_subopt_curve"] = {"ours": ours["subopt"].mean(0).tolist(), "b3": b3_sub.mean(0).tolist(),
                                   "b1_first_subset_ours": ours["subopt"][b1[0]["ids"]].mean(0).tolist(),
                                   "b1_first_subset": b1[0]["subopt"].mean(0).tolist()}
    print("agreement:", agree, flush=True)
    del data

    # machine limits
    peak = measure_peak()
    rng_only = measure_rng_only(args.seeds, args.chunk_size)
    flops, bytes_ = work_model(report["ours_1dev"]["iterations_sum"], args.seeds)
    peak_flops = max(peak["numpy_matmul_flops"], peak["jax_matmul_flops"])
    t_limit_parts = {"flops_s": flops / peak_flops, "bytes_s": bytes_ / peak["copy_bandwidth_Bps"],
                     "rng_s": rng_only["rng_only_s"]}
    report["limits"] = {**peak, **rng_only, "flops": flops, "bytes": bytes_, **t_limit_parts,
                        "t_limit_s": max(t_limit_parts.values())}
    report["uptime_after"] = _uptime()
    print("limits:", report["limits"], flush=True)
    print("uptime:", report["uptime_after"], flush=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print("wrote", out / "report.json")


if __name__ == "__main__":
    main()
