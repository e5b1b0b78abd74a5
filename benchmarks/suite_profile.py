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

``OUT/tests.jsonl`` holds one line per test, ``OUT/summary.json`` the sums (printed too).
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


def main(argv=None) -> int:
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
