"""Benchmark (issue 15, the test-suite target): where the test suite's time goes, compilation against the rest.

A pytest plugin and its runner. Loaded into pytest (and into every xdist worker: ``-p`` travels with the
command line), it registers listeners on JAX's compile events (``jax.monitoring``) and records, per test
(setup + call + teardown), the wall time and the seconds spent in

- ``xla``: XLA compiling a lowered program (``/jax/core/compile/backend_compile_duration``; never nested);
- ``lower``: lowering a traced program to MLIR (``/jax/core/compile/jaxpr_to_mlir_module_duration``);
- ``trace``: tracing Python to a jaxpr (``/jax/core/compile/jaxpr_trace_duration``). A jitted function traced
  inside another one's trace is timed inside the outer trace too, so this sum is an upper bound.

The runner runs pytest with the plugin, then sums the workers' records: the test time, its compile share, the
tests with the most compile time, and the number of XLA compilations.

Run from the repository root (a quiet machine; the README's test command plus the plugin)::

    PYTHONPATH=. python benchmarks/suite_profile.py --out /tmp/suite_profile -- -q -n 2 --dist worksteal

``OUT/tests_*.jsonl`` hold one line per test, ``OUT/summary.json`` the sums (printed too). Two runs (of two
commits, say) are compared over the tests both ran with ``python benchmarks/suite_profile.py compare OLD NEW``,
where each side is an ``OUT`` folder or the output of ``pytest --durations=0``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

EVENTS = {"/jax/core/compile/backend_compile_duration": "xla",
          "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
          "/jax/core/compile/jaxpr_trace_duration": "trace"}
_ENV = "RLHF_BANDITS_SUITE_PROFILE"
_current = {"xla": 0.0, "lower": 0.0, "trace": 0.0, "compiles": 0}


def _listener(event: str, duration: float, **_: object) -> None:
    kind = EVENTS.get(event)
    if kind is not None:
        _current[kind] += duration
        _current["compiles"] += kind == "xla"


def pytest_configure(config):
    import jax.monitoring
    jax.monitoring.register_event_duration_secs_listener(_listener)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    for key in _current:
        _current[key] = 0
    started = time.perf_counter()
    yield
    record = {"test": item.nodeid, "wall_s": time.perf_counter() - started, **_current}
    out = os.environ.get(_ENV)
    if out:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(Path(out) / f"tests_{worker}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def summarize(out: Path, top: int = 20) -> dict:
    """The sums over ``out/tests_*.jsonl`` (one record per test)."""
    records = [json.loads(line) for p in sorted(out.glob("tests_*.jsonl")) for line in p.read_text().splitlines()]
    total = {k: sum(r[k] for r in records) for k in ("wall_s", "xla", "lower", "trace", "compiles")}
    by_file: dict[str, dict] = {}
    for r in records:
        f = by_file.setdefault(r["test"].split("::")[0], {"tests": 0, "wall_s": 0.0, "xla": 0.0, "lower": 0.0,
                                                          "trace": 0.0, "compiles": 0})
        f["tests"] += 1
        for k in ("wall_s", "xla", "lower", "trace", "compiles"):
            f[k] += r[k]
    return {"tests": len(records), **{f"sum_{k}": v for k, v in total.items()},
            "xla_share": total["xla"] / total["wall_s"], "lower_share": total["lower"] / total["wall_s"],
            "trace_share_upper": total["trace"] / total["wall_s"],
            "top_tests_by_compile": sorted(records, key=lambda r: -(r["xla"] + r["lower"]))[:top],
            "files": dict(sorted(by_file.items(), key=lambda kv: -kv[1]["wall_s"]))}


def load_tests(path: Path) -> dict[str, dict]:
    """``{node id: record}`` from this plugin's ``tests_*.jsonl`` (a file, or a folder of them) or from the output
    of ``pytest --durations=0`` (setup + call + teardown summed; pytest hides durations under 5 ms, so those
    tests are missing there)."""
    files = sorted(path.glob("tests_*.jsonl")) if path.is_dir() else [path]
    if files and files[0].suffix == ".jsonl":
        return {r["test"]: r for f in files for r in map(json.loads, f.read_text().splitlines())}
    import re
    out: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*([0-9.]+)s (setup|call|teardown)\s+(\S.*)$", line)
        if match:
            out.setdefault(match.group(3).strip(), {"wall_s": 0.0})["wall_s"] += float(match.group(1))
    return out


def compare(old: Path, new: Path) -> dict:
    """Two runs' sums over the tests both ran (same node id), and each file's."""
    a, b = load_tests(old), load_tests(new)
    common = sorted(set(a) & set(b))
    fields = [f for f in ("wall_s", "xla", "lower", "trace", "compiles")
              if all(f in a[k] and f in b[k] for k in common)]
    by_file: dict[str, dict] = {}
    for k in common:
        entry = by_file.setdefault(k.split("::")[0], {"tests": 0, **{f"{f}_old": 0.0 for f in fields},
                                                      **{f"{f}_new": 0.0 for f in fields}})
        entry["tests"] += 1
        for f in fields:
            entry[f"{f}_old"] += a[k][f]
            entry[f"{f}_new"] += b[k][f]
    return {"tests_old": len(a), "tests_new": len(b), "common": len(common),
            **{f"{f}_old": sum(a[k][f] for k in common) for f in fields},
            **{f"{f}_new": sum(b[k][f] for k in common) for f in fields},
            "only_new_wall_s": sum(b[k]["wall_s"] for k in set(b) - set(a)), "files": by_file}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:
        if len(argv) != 3:
            print("usage: suite_profile.py compare OLD NEW (tests_*.jsonl folders/files or pytest --durations=0 logs)",
                  file=sys.stderr)
            return 2
        result = compare(Path(argv[1]), Path(argv[2]))
        print(json.dumps({k: v for k, v in result.items() if k != "files"}, indent=1))
        for name, f in sorted(result["files"].items()):
            print(f"  {name:48s} {f['tests']:4d} tests " + "  ".join(
                f"{k[:-4]} {f[k]:.1f} -> {f[k[:-4] + '_new']:.1f}" for k in f if k.endswith("_old")))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: pytest's arguments")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in args.out.glob("tests_*.jsonl"):
        stale.unlink()
    pytest_args = [a for a in args.pytest_args if a != "--"]
    started = time.perf_counter()
    rc = subprocess.call([sys.executable, "-m", "pytest", "-p", "benchmarks.suite_profile", *pytest_args],
                         env={**os.environ, _ENV: str(args.out)})
    summary = {"pytest_returncode": rc, "wall_s": time.perf_counter() - started, **summarize(args.out)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{summary['tests']} tests, {summary['sum_wall_s']:.0f} s of test time (wall {summary['wall_s']:.0f} s): "
          f"XLA compile {summary['sum_xla']:.0f} s ({summary['xla_share']:.0%}, {summary['sum_compiles']} "
          f"compilations), lowering {summary['sum_lower']:.0f} s ({summary['lower_share']:.0%}), tracing <= "
          f"{summary['sum_trace']:.0f} s ({summary['trace_share_upper']:.0%})")
    for name, f in list(summary["files"].items())[:15]:
        print(f"  {name:48s} {f['tests']:4d} tests {f['wall_s']:7.1f} s  xla {f['xla']:6.1f} s  "
              f"lower {f['lower']:5.1f} s  trace<= {f['trace']:6.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
