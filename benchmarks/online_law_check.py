"""Check (issue 15, item 3): P1's online loop has the same law in ours and in B3, round by round, on fresh seeds.

``online_loop.py`` compares ours with B3 on the final round only, and its B3 always draws NumPy seeds ``0..S-1``,
so two of its runs share B3's sample. Here ours runs seed keys ``seed_keys(0, S, start)`` and B3 NumPy seeds
``start .. start + S - 1`` (``online_loop.np_instance``): two independent samples of the same law, neither used by
the benchmark. For every metric of ``online_loop.METRICS`` and every round t, the two-sample statistic

    z_t = (mean_ours - mean_B3) / sqrt(var_ours / S + var_B3 / S)

is reported, and the family passes at 5% overall when every ``|z_t|`` is below the Bonferroni quantile of the
rounds x metrics tested (rounds whose two samples are constant or zero up to rounding, e.g. ``in_confidence_set``
and ``kl_to_ref`` at t = 0, are skipped).
Not a timing: no clock is read except to report the two runs' seconds.

Run (from the repository root)::

    PYTHONPATH=. python benchmarks/online_law_check.py --seeds 4096 --start 100000 --out /tmp/law.json
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import online_loop as ol  # noqa: E402


def run_ours(sz: ol.Sizes, seeds: int, start: int, chunk: int) -> dict:
    ol._jax()
    from experiments.catalogue import online_common as oe
    from experiments.engine.runner import Progress, run_vectorized, seed_keys
    config = ol.explore_config(sz)
    coverage, temperature = config.setting_values("hard")
    fn = functools.partial(oe.per_seed, config=config, group=(ol.STRATEGY,), online=config.online, offline_size=0)
    res = run_vectorized(fn, seed_keys(0, seeds, start), np.float64(coverage), np.float64(temperature), np.int32(0),
                         progress=Progress(), chunk_size=chunk)
    return {k: np.asarray(res[k]).reshape(seeds, -1) for k in ol.METRICS}


def run_b3(sz: ol.Sizes, seeds: int, start: int, chunk: int) -> dict:
    parts = [ol.run_b3(sz, np.arange(start + lo, start + min(seeds, lo + chunk)))[0] for lo in range(0, seeds, chunk)]
    return {k: np.concatenate([p[k] for p in parts]) for k in ol.METRICS}


def compare(ours: dict, b3: dict) -> dict:
    rows = []
    for metric in ol.METRICS:
        for t in range(ours[metric].shape[1]):
            x, y = ours[metric][:, t], b3[metric][:, t]
            se = math.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y))
            if se == 0.0 or max(np.abs(x).max(), np.abs(y).max()) < 1e-12:   # constant, or zero up to rounding
                continue
            rows.append({"metric": metric, "round": t, "ours": float(x.mean()), "b3": float(y.mean()),
                         "diff": float(x.mean() - y.mean()), "z": float((x.mean() - y.mean()) / se)})
    critical = float(stats.norm.ppf(1 - 0.025 / len(rows)))
    worst = max(rows, key=lambda r: abs(r["z"]))
    return {"tests": len(rows), "bonferroni_critical_z": critical, "flagged_at_5pct_each": sum(abs(r["z"]) > 1.96
                                                                                               for r in rows),
            "worst": worst, "pass": abs(worst["z"]) <= critical, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=4096)
    parser.add_argument("--start", type=int, default=100000, help="first seed of both samples (default 100000)")
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    sz = ol.Sizes()
    t0 = time.perf_counter()
    ours = run_ours(sz, args.seeds, args.start, args.chunk_size)
    t1 = time.perf_counter()
    b3 = run_b3(sz, args.seeds, args.start, args.chunk_size)
    t2 = time.perf_counter()
    report = {"seeds": args.seeds, "start": args.start, "sizes": dataclasses.asdict(sz),
              "ours_s": t1 - t0, "b3_s": t2 - t1, **compare(ours, b3)}
    args.out.write_text(json.dumps(report, indent=1, default=str))
    final = {r["metric"]: r for r in report["rows"] if r["round"] == ours["subopt"].shape[1] - 1}
    for metric, r in final.items():
        print(f"final {metric:20s} ours {r['ours']:.4f}  B3 {r['b3']:.4f}  diff {r['diff']:+.4f}  z {r['z']:+.2f}")
    w = report["worst"]
    print(f"{report['tests']} (metric, round) tests: {report['flagged_at_5pct_each']} beyond |z| = 1.96; worst "
          f"{w['metric']} t={w['round']} z={w['z']:+.2f} against the Bonferroni {report['bonferroni_critical_z']:.2f}: "
          f"{'pass' if report['pass'] else 'FAIL'}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
