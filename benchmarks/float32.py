"""What float32 (``--no-x64``) buys, and whether its statistics stay within the float64 run's (issue 15).

For each workload it runs the command a user runs, ``python -m experiments run NAME ... --quiet``, in fresh
processes with the compilation cache off, ``--repeats`` times in float64 and in float32 alternately (so
that the machine's drift falls on both), and reads ``compile_s``, ``run_s`` and ``wall_s`` from each run's
``manifest.json`` (medians are reported).

Statistics (``results.csv`` of the first float64 and the first float32 run): the two runs use the same
seed keys, but a float32 uniform or Gaussian is made from other bits than a float64 one
(``bandits.comparison_uniforms``), so they are two independent samples of the same law, not a rounding of
one another. For every group (the workload's ``group`` columns, e.g. setting x n x algorithm) and metric:
the float64 seed mean with its 95% t-interval, the float32 seed mean and whether it lies inside that
interval (``within_band``, what the issue asks), and Welch's interval of ``mean32 - mean64``
(``welch_zero``: groups where it contains 0 at 95% each; ``family_consistent``: every group's at the
Bonferroni level ``1 - 0.05 / groups``, so that the family is judged at 5%).

Usage (repository root, quiet machine)::

  PYTHONPATH=. python benchmarks/float32.py --workloads offline,online --repeats 3 --out /tmp/f32

Output: a table on stdout and ``OUT/report.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# name -> (experiment arguments, group columns, metric columns)
WORKLOADS = {
    "offline": (["offline-rate", "--preset", "paper", "--set", "algorithms=mle_gibbs", "panel_coverages="],
                ("setting", "n", "algorithm"), ("subopt",)),
    "online": (["online-explore", "--seeds", "256", "--set", "settings=hard", "n_contexts=128", "n_actions=32",
                "iterations=19", "batch_size=64", "algorithms=pi0,self_play,uniform"],
               ("setting", "algorithm", "iteration"), ("subopt_kl",)),
}


def run_once(args: list[str], out: Path, x64: bool, timeout: float) -> dict:
    env = dict(os.environ, RLHF_BANDITS_COMPILATION_CACHE="off", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "experiments", "run", *args, "--quiet", "--out", str(out)]
    if not x64:
        cmd.append("--no-x64")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    record = {"exit_code": proc.returncode, "process_s": time.perf_counter() - t0}
    if proc.returncode != 0:
        record["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
        return record
    manifest = json.loads((out / args[0] / "manifest.json").read_text())
    record.update({k: manifest["timings"].get(k) for k in ("compile_s", "run_s", "wall_s")})
    return record


def compare(dir64: Path, dir32: Path, groups: tuple[str, ...], metrics: tuple[str, ...]) -> dict:
    from experiments.engine import stats, storage
    t64, t32 = storage.read_results(dir64), storage.read_results(dir32)
    keys64 = list(zip(*(np.asarray(t64[g]).tolist() for g in groups)))
    keys32 = list(zip(*(np.asarray(t32[g]).tolist() for g in groups)))
    if keys64 != keys32 or not np.array_equal(t64["seed"], t32["seed"]):
        raise SystemExit("float32 and float64 tables differ in their rows")
    out = {}
    for metric in metrics:
        y64, y32 = np.asarray(t64[metric], float), np.asarray(t32[metric], float)
        rows, within, zero = [], 0, 0
        for key in dict.fromkeys(keys64):
            sel = np.array([k == key for k in keys64])
            a, b = y64[sel], y32[sel]
            if np.all(np.isnan(a)) and np.all(np.isnan(b)):
                continue
            mean64, half64 = stats.t_interval(a)
            diff, low, high = stats.welch_interval(a, b)
            inside = bool(abs(float(np.mean(b)) - float(mean64)) <= float(half64))
            within += inside
            zero += bool(low <= 0.0 <= high)
            rows.append({"group": [str(k) for k in key], "mean64": float(mean64), "half64": float(half64),
                         "mean32": float(np.mean(b)), "welch_diff": diff, "welch_half": (high - low) / 2,
                         "inside": inside, "welch_zero": bool(low <= 0.0 <= high), "a": a, "b": b})
        level = 1.0 - 0.05 / max(len(rows), 1)
        family = all(lo <= 0.0 <= hi for lo, hi in (stats.welch_interval(r["a"], r["b"], level)[1:] for r in rows))
        for r in rows:
            del r["a"], r["b"]
        out[metric] = {"groups": len(rows), "within_band": within, "welch_zero": zero,
                       "family_consistent": family, "rows": rows}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default="offline,online")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    names = args.workloads.split(",")
    for name in names:
        if name not in WORKLOADS:
            raise SystemExit(f"--workloads: {name!r} is not one of {sorted(WORKLOADS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
              "workloads": {}}
    for name in names:
        cmd, groups, metrics = WORKLOADS[name]
        runs = {"float64": [], "float32": []}
        for r in range(args.repeats):
            for label, x64 in (("float64", True), ("float32", False)):
                rec = run_once(cmd, args.out / f"{name}_{label}_{r}", x64, args.timeout)
                runs[label].append(rec)
                print(f"{name} {label} run {r}: {rec}", flush=True)
                if rec["exit_code"] != 0:
                    raise SystemExit(f"{name} {label} failed: {rec.get('error')}")
        med = {label: {k: statistics.median(rec[k] for rec in recs) for k in ("compile_s", "run_s", "wall_s")}
               for label, recs in runs.items()}
        agreement = compare(args.out / f"{name}_float64_0" / cmd[0], args.out / f"{name}_float32_0" / cmd[0],
                            groups, metrics)
        report["workloads"][name] = {"command": cmd, "runs": runs, "median": med, "agreement": agreement}
        print(f"{name}: median compile / run / wall  float64 {med['float64']['compile_s']:.1f} / "
              f"{med['float64']['run_s']:.1f} / {med['float64']['wall_s']:.1f} s, float32 "
              f"{med['float32']['compile_s']:.1f} / {med['float32']['run_s']:.1f} / {med['float32']['wall_s']:.1f} s; "
              f"run speed-up {med['float64']['run_s'] / med['float32']['run_s']:.2f}x", flush=True)
        for metric, a in agreement.items():
            worst = max(a["rows"], key=lambda row: abs(row["welch_diff"]) / max(row["welch_half"], 1e-300))
            print(f"  {metric}: float32 mean inside the float64 95% interval in {a['within_band']} of {a['groups']} "
                  f"groups; Welch interval contains 0 in {a['welch_zero']} of {a['groups']}, family (Bonferroni) "
                  f"{'consistent' if a['family_consistent'] else 'NOT consistent'}; largest standardised "
                  f"difference {worst['welch_diff']:.3g} +- {worst['welch_half']:.3g} at {worst['group']}",
                  flush=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=1))
    report["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
