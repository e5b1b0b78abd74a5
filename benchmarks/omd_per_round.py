"""Benchmark (docs/design.md §8; P3 §4.1-4.2, docs/theory.md §9.1 item 17): per-round time of one-pass OMD vs MLE refit vs t.

For each t in --rounds: the cost of round t (one update on comparison t, given the state after t-1
rounds), for
  ours-omd    the registry's ``omd`` update (algorithms.onepass.estimators: omd.omd_step, no projection), jitted
              (O(d^2), flat in t)
  ours-mle    the registry's ``mle`` update (mle_refit.mle_step), jitted, buffer of exactly t rows
              (warm-started Newton, O(t))
  np-omd      the same OMD step in plain NumPy (Sherman-Morrison, no projection)
  np-mle      scipy.optimize.minimize(L-BFGS-B) on the first t rows, warm-started at theta_{t-1}
Compile excluded (one warm-up call), block_until_ready, median of --repeats. Speed is measured, never
asserted. Run a tiny check with:  PYTHONPATH=. python benchmarks/omd_per_round.py --rounds 8,32 --repeats 3

The NumPy/SciPy references run with one BLAS thread (``OPENBLAS_NUM_THREADS=1`` unless already set): their
products are t x 8, too small to split, and on the shared 2-core machine a multi-threaded OpenBLAS made
np-mle at t = 16 take 0.06 s instead of 3e-4 s (threads waiting for cores), which times the scheduler,
not the method.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")     # before NumPy loads its BLAS (module docstring)

import numpy as np  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--rounds", default="16,64,256,1024,4096")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--lam", type=float, default=1.0)
    parser.add_argument("--eta", type=float, default=1.0,
                        help="OMD's step size (the experiments' default; the cost does not depend on it)")
    args = parser.parse_args(argv)
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from scipy.optimize import minimize
    from algorithms.onepass import omd
    from algorithms.onepass.estimators import OnePassOptions, make_estimator
    rounds = [int(r) for r in args.rounds.split(",")]
    rng = np.random.default_rng(0)
    n, d = max(rounds), args.dim
    f = rng.standard_normal((n, 2, d))
    f /= np.linalg.norm(f, axis=-1, keepdims=True)
    z = f[:, 0] - f[:, 1]
    theta_star = rng.standard_normal(d)
    theta_star *= 2 / np.linalg.norm(theta_star)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-z @ theta_star))).astype(float)

    def timed(fn, *a):
        jax.block_until_ready(fn(*a))
        ts = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*a))
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    options = OnePassOptions(lam=args.lam, omd_step_size=args.eta, projection="none")
    omd_fit = jax.jit(omd.omd_fit)
    omd_step = jax.jit(make_estimator("omd", d, options).update)
    report = []
    for t in rounds:
        mask = jnp.arange(n) < t - 1
        state = omd_fit(jnp.asarray(z), jnp.asarray(y), mask, args.lam, args.eta)
        row = {"t": t, "ours-omd": timed(omd_step, state, jnp.asarray(z[t - 1]), y[t - 1])}
        th, hinv = np.asarray(state.theta), np.asarray(state.hess_inv)

        def np_omd():
            u = z[t - 1] @ th
            s = 1 / (1 + np.exp(-u))
            w = hinv @ (np.sqrt(args.eta * s * (1 - s)) * z[t - 1])
            tilde = hinv - np.outer(w, w) / (1 + np.sqrt(args.eta * s * (1 - s)) * z[t - 1] @ w)
            new = th - args.eta * tilde @ ((s - y[t - 1]) * z[t - 1])
            s2 = 1 / (1 + np.exp(-z[t - 1] @ new))
            w2 = hinv @ (np.sqrt(s2 * (1 - s2)) * z[t - 1])
            return new, hinv - np.outer(w2, w2) / (1 + np.sqrt(s2 * (1 - s2)) * z[t - 1] @ w2)
        row["np-omd"] = timed(np_omd)
        mle = make_estimator("mle", d, options, capacity=t, dtype=jnp.float64)
        mle_step = jax.jit(mle.update)
        prev = mle.init()._replace(z=jnp.asarray(z[:t]).at[t - 1].set(0.0), y=jnp.asarray(y[:t]).at[t - 1].set(0.0),
                             count=jnp.asarray(t - 1, jnp.int32))
        warm = np.zeros(d) if t == 1 else np.asarray(
            mle_step(prev._replace(count=jnp.asarray(t - 2, jnp.int32)), jnp.asarray(z[t - 2]), y[t - 2]).theta)
        prev = prev._replace(theta=jnp.asarray(warm))
        row["ours-mle"] = timed(mle_step, prev, jnp.asarray(z[t - 1]), y[t - 1])
        zs, ss = z[:t], 2 * y[:t] - 1

        def np_mle():
            fval = lambda th_: np.sum(np.logaddexp(0, -ss * (zs @ th_))) + 0.5 * args.lam * th_ @ th_
            grad = lambda th_: -(zs.T @ (ss / (1 + np.exp(ss * (zs @ th_))))) + args.lam * th_
            return minimize(fval, warm, jac=grad, method="L-BFGS-B", options={"gtol": 1e-10}).x
        row["np-mle"] = timed(np_mle)
        report.append(row)
        print(json.dumps(row))
    return report


if __name__ == "__main__":
    main()
