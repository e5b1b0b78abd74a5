"""Benchmark (issue 15 speed, issue 17 P2): P2's policy-level pessimistic solver (algorithms.nash.pessimism)
at several ``(restart_every, warm_inner)`` settings: all ``K + 2`` min-player starts every ``R``-th step
(``R = 1``: every step), ``W`` MM steps from the two warm starts on the other steps.

For each seed and skew strength: the instance of nash-intransitive (``bandits.make_instance`` with the
given shape), ``n`` comparisons ``a1, a2 ~ pi0``, the general-preference MLE's confidence set
(``c_beta``, ``beta_mode='theory'``), then ``policy_pessimistic_policy`` at each setting. Per
setting: the solve's run time (jitted, compile excluded by one warm-up call, ``block_until_ready``, median
of ``--repeats``), its value ``E_x h_x(pi_hat)`` (larger is better: a maximisation), its certificate
(a bound on ``max h - h(pi_hat)``, smaller is better), the exact Nash duality gap of ``pi_hat`` in the
true game and ``max |log pi_hat - log pi_hat(first setting)|``. Speed is measured, never asserted.

    PYTHONPATH=. python benchmarks/pessimism_solver.py --seeds 3 --out /tmp/pess.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

import bandits as b  # noqa: E402
from algorithms.core import confidence as conf  # noqa: E402
from algorithms.nash import pessimism as ps  # noqa: E402
from algorithms.nash import preference_model as gp  # noqa: E402
from bandits.nash import policy_metrics  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strengths", default="0,2,8")
    parser.add_argument("--settings", default="10:30,10:5,25:5",
                        help="comma-separated restart_every:warm_inner pairs (warm_inner defaults to 5)")
    parser.add_argument("--n-contexts", type=int, default=128)
    parser.add_argument("--n-actions", type=int, default=32)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--kl-coef", type=float, default=0.1)
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--c-beta", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    settings = [tuple(int(x) for x in (item.split(":") + ["5"])[:2]) for item in args.settings.split(",")]
    rows = []
    for seed in range(args.seeds):
        for strength in (float(s) for s in args.strengths.split(",")):
            cfg = b.InstanceConfig(n_contexts=args.n_contexts, n_actions=args.n_actions, dim=args.dim,
                                   reward_norm=1.0, kl_coef=args.kl_coef, skew_strength=strength)
            k_inst, k_data = jax.random.split(jax.random.key(seed))
            inst = b.make_instance(k_inst, cfg)
            data = b.sample_preference_data(k_data, inst, inst.log_pi0, inst.log_pi0, args.n)
            cs = gp.mle_confidence_set(inst, data, args.n, 1.0, conf.ConfidenceConfig(c_beta=args.c_beta))
            star = b.nash_equilibrium(inst, "identity").log_pi
            first = None
            for r, w in settings:
                solve = jax.jit(lambda r=r, w=w: ps.policy_pessimistic_policy(inst, cs, "identity", restart_every=r,
                                                                              warm_inner=w))
                jax.block_until_ready(solve())
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    sol = jax.block_until_ready(solve())
                    times.append(time.perf_counter() - start)
                first = sol.log_pi if first is None else first
                row = dict(seed=seed, skew_strength=strength, restart_every=r, warm_inner=w, beta=float(cs.beta),
                           run_s=statistics.median(times), value=float(sol.value),
                           certificate=float(sol.certificate),
                           nash_gap=float(policy_metrics(inst, sol.log_pi, star, "identity")["nash_gap"]),
                           max_dlogpi_vs_first=float(jnp.max(jnp.abs(sol.log_pi - first))))
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for r, w in settings:
        mine = [x for x in rows if (x["restart_every"], x["warm_inner"]) == (r, w)]
        summary[f"{r}:{w}"] = dict(median_run_s=statistics.median(x["run_s"] for x in mine),
                               max_certificate=max(x["certificate"] for x in mine),
                               mean_value=statistics.fmean(x["value"] for x in mine))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = dict(args=vars(args), commit=commit, machine=platform.processor() or platform.machine(),
                  jax=jax.__version__, devices=[str(d) for d in jax.devices()], rows=rows, summary=summary)
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
