"""``benchmarks/gpu.sh`` end to end at its tiny size on CPU (the GPU run itself needs a GPU): every step runs,
the report names the device, versions, exit codes and timings, and the logs are written; bad usage and a
machine without a GPU (full mode) are one line with exit 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"


def _env(**extra):
    # the python running the tests is the one with jax; the script installs nothing
    return {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu", **extra}


def test_tiny_mode_runs_every_step_and_writes_the_report(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "gpu"), "--tiny"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "gpu"
    assert proc.stdout.strip() == str(out / "report.json")
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "tiny" and report["ok"] is True
    assert report["device"]["backend"] == "cpu" and report["device"]["count"] >= 1
    assert report["device"]["versions"]["jax"] and report["device"]["versions"]["optax"]
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["offline", "online", "preset"]
    for name, step in steps.items():
        assert step["exit_code"] == 0 and not step["timed_out"] and 0 < step["seconds"] < step["limit_s"], step
        assert (out / step["log"]).is_file()      # the benchmarks' --part runs print little: their JSON is the result
    assert steps["offline"]["result"]["devices"] >= 1 and steps["offline"]["result"]["first_call"]["compile_s"] > 0
    assert steps["online"]["result"]["seeds"] == 4 and steps["online"]["result"]["loop"]["first_call"]["run_s"] > 0
    preset = steps["preset"]["result"]
    assert preset["experiment"] == "offline-rate" and preset["seeds"] == 2 and preset["results"]["rows"] > 0
    assert (out / "runs" / "offline-rate" / "results.csv").exists()
    assert "[offline-rate] wrote " in (out / "logs" / "preset.log").read_text()
    assert abs(report["total_s"] - sum(s["seconds"] for s in steps.values())) < 1e-6


def test_bad_usage_and_no_gpu_are_one_line(tmp_path):
    for argv, words in [([], "OUTDIR is missing"), ([str(tmp_path / "a"), "--fast"], "unknown option '--fast'"),
                        ([str(tmp_path / "a"), str(tmp_path / "b")], "one OUTDIR")]:
        proc = subprocess.run(["bash", str(SCRIPT), *argv], env=_env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, argv
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "full")], env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "jax sees no GPU (backend 'cpu')" in proc.stderr, proc.stderr
    assert not (tmp_path / "full" / "report.json").exists()
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "x")], env=_env(PYTHON="/bin/false"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4 and len(proc.stderr.strip().splitlines()) == 1
