"""Compile time of every experiment's presets, cold and from the persistent cache (issue 15, targets).

For each experiment and preset it runs the command a user runs, ``python -m experiments run NAME --preset
P --seeds S --quiet``, in a fresh process, and reads ``compile_s`` (tracing, lowering and XLA compilation,
summed over the run's compiled calls) and ``wall_s`` from the run's ``manifest.json``:

- ``cold``: ``RLHF_BANDITS_COMPILATION_CACHE=off``, so every program compiles;
- ``warm`` (presets in ``--warm-presets``, default ``quick``): twice more with the cache pointed at an empty
  directory of this benchmark's own; the second run is the "second run of the same preset" of the issue,
  compiling from disk.

``--seeds`` (default 2) keeps the runs short: a compiled program's size does not depend on the number of
seeds, except that a run compiles one program per distinct chunk shape, and at 2 seeds every chunk has
the same shape. ``quick`` presets can also be timed at their own seed counts (``--own-seeds``).

Usage (repository root, quiet machine)::

  PYTHONPATH=. python benchmarks/compile_presets.py --presets quick,paper --out /tmp/compile_presets
  PYTHONPATH=. python benchmarks/compile_presets.py --only offline-rate,online-explore --out /tmp/cp

Output: a table on stdout and ``OUT/report.json`` (per experiment and preset: the three runs' compile and
wall seconds, exit codes, the last line of a failure).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_once(name: str, preset: str, seeds: int | None, out: Path, cache: str, timeout: float) -> dict:
    env = dict(os.environ, RLHF_BANDITS_COMPILATION_CACHE=cache, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "experiments", "run", name, "--preset", preset, "--quiet", "--out", str(out)]
    if seeds is not None:
        cmd += ["--seeds", str(seeds)]
    shutil.rmtree(out / name, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"exit_code": 124, "process_s": time.perf_counter() - t0}
    record = {"exit_code": proc.returncode, "process_s": time.perf_counter() - t0}
    manifest = out / name / "manifest.json"
    if proc.returncode == 0 and manifest.exists():
        timings = json.loads(manifest.read_text()).get("timings", {})
        record.update(compile_s=timings.get("compile_s"), run_s=timings.get("run_s"), wall_s=timings.get("wall_s"))
    else:
        record["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="quick,paper")
    ap.add_argument("--only", help="comma-separated experiment names (default: every registered one)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--own-seeds", action="store_true", help="run quick presets at their own seed counts")
    ap.add_argument("--warm-presets", default="quick", help="presets whose cache effect is measured "
                    "(two more runs each); empty: none")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from experiments.engine import registry
    names = args.only.split(",") if args.only else registry.names()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"seeds": args.seeds, "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
              "runs": {}}
    print(f"{'experiment':20s} {'preset':7s} {'cold compile':>12s} {'cold wall':>10s} {'2nd run compile':>16s} {'2nd wall':>9s}")
    for name in names:
        presets = registry.get(name).presets
        for preset in args.presets.split(","):
            if preset not in presets:
                continue
            seeds = None if (args.own_seeds and preset == "quick") else args.seeds
            cold = run_once(name, preset, seeds, args.out / "runs", "off", args.timeout)
            fill = warm = {"exit_code": None}
            if preset in args.warm_presets.split(","):
                cache = tempfile.mkdtemp(prefix="rlhf_cache_", dir=args.out)
                fill = run_once(name, preset, seeds, args.out / "runs", cache, args.timeout)
                warm = run_once(name, preset, seeds, args.out / "runs", cache, args.timeout)
                shutil.rmtree(cache, ignore_errors=True)
            report["runs"][f"{name}/{preset}"] = {"cold": cold, "fill": fill, "warm": warm}
            fmt = lambda r, k: (f"{r[k]:.1f}" if r.get(k) is not None else
                                "-" if r["exit_code"] is None else f"exit {r['exit_code']}")
            print(f"{name:20s} {preset:7s} {fmt(cold, 'compile_s'):>12s} {fmt(cold, 'wall_s'):>10s} "
                  f"{fmt(warm, 'compile_s'):>16s} {fmt(warm, 'wall_s'):>9s}", flush=True)
            (args.out / "report.json").write_text(json.dumps(report, indent=1))
    report["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
