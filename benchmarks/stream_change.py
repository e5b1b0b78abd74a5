"""Did a change of the random streams change any law? Two runs' ``results.csv``, compared seed by seed.

Issue 15, item 3: the engine's samplers changed how comparisons are drawn (counter-based uniforms,
factored pair sampling), so every result moved; what must not move is the *law* of each metric. Two runs
of one experiment on the same seeds share their instances (instance generation did not change), so the
difference ``new - old`` of a metric on a seed has mean zero when the laws agree. Per group (``--keys``)
and metric, this prints the mean difference with its paired Student-t 95% interval and flags a group
whose interval excludes zero; with many groups, some flags at 5% each are what chance gives, so the
script also reports the number of flags against its expectation (5% of the groups) and a Bonferroni
verdict (any group with ``p < 0.05 / groups``). A group whose differences are all below ``--rounding``
(relative) is a data-free quantity computed in another order and is not tested.

Usage::

  python benchmarks/stream_change.py OLD/results.csv NEW/results.csv --keys setting,n,algorithm \\
      --metrics subopt,subopt_kl [--json OUT.json]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict

import numpy as np
from scipy import stats


def read(path: str, keys: list[str], metrics: list[str]) -> dict:
    """``{(group..., seed): {metric: value}}`` of a results.csv."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            group = tuple(row[k] for k in keys) + (int(row["seed"]),)
            out[group] = {m: float(row[m]) if row[m] not in ("", "nan") else math.nan for m in metrics}
    return out


def compare(old: dict, new: dict, metrics: list[str], rounding: float = 1e-9) -> list[dict]:
    """Per group and metric: the paired difference; a group where every seed's ``|new - old|`` is within
    ``rounding`` times ``|old|`` (a quantity that does not depend on the data, recomputed in another order)
    counts as equal up to rounding and is not tested."""
    groups = defaultdict(list)
    for key in sorted(set(old) & set(new)):
        groups[key[:-1]].append(key)
    rows = []
    for group, members in groups.items():
        for m in metrics:
            d = np.array([new[k][m] - old[k][m] for k in members])
            scale = np.abs(np.array([old[k][m] for k in members]))
            keep = np.isfinite(d)
            d, scale = d[keep], scale[keep]
            if d.size < 3 or np.all(np.abs(d) <= rounding * scale):
                rows.append({"group": list(group), "metric": m, "seeds": int(d.size), "mean_diff": float(d.mean()) if d.size else math.nan,
                             "half_width": 0.0, "p": 1.0, "flag": False})
                continue
            se = d.std(ddof=1) / math.sqrt(d.size)
            half = stats.t.ppf(0.975, d.size - 1) * se
            p = float(2 * stats.t.sf(abs(d.mean()) / se, d.size - 1)) if se > 0 else 1.0
            old_mean = float(np.mean([old[k][m] for k in members]))
            rows.append({"group": list(group), "metric": m, "seeds": int(d.size), "old_mean": old_mean,
                         "mean_diff": float(d.mean()), "half_width": float(half), "p": p,
                         "flag": bool(abs(d.mean()) > half)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--keys", default="setting,n,algorithm")
    ap.add_argument("--metrics", default="subopt")
    ap.add_argument("--rounding", type=float, default=1e-9, help="relative size of a difference that is "
                    "rounding, not a change of law")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    keys, metrics = args.keys.split(","), args.metrics.split(",")
    rows = compare(read(args.old, keys, metrics), read(args.new, keys, metrics), metrics, args.rounding)
    tested = [r for r in rows if r["half_width"] > 0]
    flags = sum(r["flag"] for r in tested)
    bonferroni = [r for r in tested if r["p"] < 0.05 / max(len(tested), 1)]
    for r in rows:
        mark = " *" if r["flag"] else ""
        base = f"  (old mean {r['old_mean']:.4g})" if "old_mean" in r else ""
        print(f"{'/'.join(r['group'])} {r['metric']}: new - old = {r['mean_diff']:+.3e} +- {r['half_width']:.2e}"
              f" (p = {r['p']:.3f}, {r['seeds']} seeds){base}{mark}")
    summary = {"groups_tested": len(tested), "flags_at_5pct": flags, "expected_flags": 0.05 * len(tested),
               "bonferroni_rejections": len(bonferroni),
               "verdict": "no difference beyond chance" if not bonferroni else "laws differ"}
    print(json.dumps(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
