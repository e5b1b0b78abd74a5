"""The command-line interface runs end to end (demo, and list/run/plot on a test-only experiment)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.engine import registry, storage
from experiments.engine.cli import main
from tests.test_engine import ToyExperiment

ROOT = Path(__file__).resolve().parents[1]


def test_demo_prints_exact_values(capsys):
    assert main(["demo", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "optimal_value J(pi*)" in out and "nash_gap(nash)" in out
    gap_line = [l for l in out.splitlines() if "nash_gap(nash)" in l][0]
    assert abs(float(gap_line.split()[-1])) < 1e-6


# ---- list / run / plot on a test-only experiment ----


@pytest.fixture
def toy():
    exp = ToyExperiment(chunk_size=2)
    registry.register("toy", exp, replace=True)
    yield exp
    registry.unregister("toy")


def test_list_shows_names_and_descriptions(toy, capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(l.split(None, 1) == ["toy", "toy experiment for the engine tests"] for l in lines), lines


def test_run_then_plot_end_to_end(toy, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", "toy", "--seeds", "3", "--set", "shift=0.5", "method=shifted",
                 "--set", "instance.kl_coef=2", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    run_dir = out / "toy"
    assert captured.out.strip() == str(run_dir)
    assert "[toy] call0: chunk 2/2 (seeds 2-2 of 3) done" in captured.err  # progress per chunk
    assert {"results.csv", "manifest.json", "toy.png", "toy.svg"} <= {p.name for p in run_dir.iterdir()}
    table = storage.read_results(run_dir)
    assert len(table["seed"]) == 3 * 2 and sorted(set(table["n"])) == [4, 16]
    manifest = storage.read_manifest(run_dir)
    assert manifest["config"]["shift"] == 0.5 and manifest["config"]["instance"]["kl_coef"] == 2.0
    assert manifest["seeds"] == 3 and manifest["dtype"] == "float64"
    assert manifest["command"].startswith("rlhf-bandits run toy --seeds 3")

    (run_dir / "toy.png").unlink()
    assert main(["plot", str(run_dir)]) == 0
    assert (run_dir / "toy.png").stat().st_size > 1000
    assert main(["plot", str(out)]) == 0  # the output root re-plots every run inside
    assert "toy.svg" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["run", "toy", "--set", "shift=fast"], ["shift='fast'", "expected a number"]),
    (["run", "toy", "--set", "nosuch=1"], ["unknown field 'nosuch'", "allowed fields:", "instance.kl_coef"]),
    (["run", "toy", "--set", "instance.kl_coef=0"], ["kl_coef=0.0 is not allowed"]),
    (["run", "nope"], ["unknown experiment 'nope'", "available:", "toy"]),
    (["run", "toy", "--preset", "huge"], ["unknown preset 'huge'", "available: quick, paper"]),
])
def test_usage_errors_exit_2_with_a_clear_message(toy, tmp_path, capsys, argv, words):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhf-bandits run: error: ") and "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "toy" / "results.csv").exists()


def test_plot_of_a_directory_without_results_exits_2(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "holds no manifest.json" in capsys.readouterr().err


def test_bad_seed_count_is_an_argument_error(capsys):
    assert main(["run", "toy", "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert "must be an integer >= 1" in err and len(err.strip().splitlines()) == 1


def test_module_entry_point_reports_unknown_names_without_traceback():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "experiments", "run", "no_such_experiment"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown experiment 'no_such_experiment'" in proc.stderr and "Traceback" not in proc.stderr


def test_manifest_names_the_code_at_the_start_and_resumption_is_per_revision(toy, tmp_path, monkeypatch):
    """The git revision and the source digest are read before running (an edit or a commit made mid-run
    must not be recorded), and saved chunks of an interrupted run are keyed by the source digest (other
    code does not reuse them)."""
    from experiments.engine import config as config_module
    state = {"rev": "A"}
    monkeypatch.setattr(storage, "git_revision", lambda path=None: {"revision": state["rev"], "dirty": False})
    monkeypatch.setattr(storage, "code_digest", lambda: "source-" + state["rev"])
    original_run = toy.run

    def run_then_commit(*args, **kwargs):
        out = original_run(*args, **kwargs)
        state["rev"] = "B"          # someone edits and commits while the run is in flight
        return out

    monkeypatch.setattr(toy, "run", run_then_commit)
    digests = []
    real_hash = config_module.config_hash
    monkeypatch.setattr(config_module, "config_hash", lambda *p: digests.append(real_hash(*p)) or digests[-1])
    assert main(["run", "toy", "--seeds", "2", "--out", str(tmp_path)]) == 0
    manifest = storage.read_manifest(tmp_path / "toy")
    assert manifest["git"]["revision"] == "A" and manifest["code_sha256"] == "source-A"
    assert main(["run", "toy", "--seeds", "2", "--out", str(tmp_path)]) == 0
    assert storage.read_manifest(tmp_path / "toy")["git"]["revision"] == "B"
    assert len(digests) == 2 and digests[0] != digests[1]


def test_quiet_prints_nothing_but_the_run_directory(toy, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(toy, "plot", lambda *args: [])   # figures are not the point here (and most of the time)
    assert main(["run", "toy", "--seeds", "3", "--quiet", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.strip() == str(tmp_path / "toy")
    assert main(["run", "toy", "--seeds", "3", "--out", str(tmp_path)]) == 0   # stderr is no terminal: lines
    err = capsys.readouterr().err
    assert "\r" not in err and "[toy] call0: chunk 2/2 (seeds 2-2 of 3) done in " in err and " elapsed)" in err
