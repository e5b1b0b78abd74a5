"""``run --sweep`` (experiments.engine.sweep): a grid of configs as one run. A sweep over a float field compiles
once and equals the separate ``--set`` runs; a grid is the product of its sweeps, with one column per field and
one figure folder per point; bad sweeps are one line."""
from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.engine import cli, registry, runner, storage
from tests.test_engine import ToyExperiment


@pytest.fixture(autouse=True)
def same_code(monkeypatch):
    monkeypatch.setattr(storage, "code_digest", lambda: "source-A")
    monkeypatch.setattr(storage, "git_revision", lambda path=None: {"revision": "A", "dirty": False})


@pytest.fixture
def toy():
    registry.register("toy", ToyExperiment(), replace=True)
    yield
    registry.unregister("toy")


def _table(run_dir):
    return storage.read_results(run_dir)


def test_a_float_sweep_compiles_once_and_equals_the_separate_runs(toy, tmp_path, monkeypatch):
    compiles = []
    real_jit = runner.jax.jit
    monkeypatch.setattr(runner, "_compiled", type(runner._compiled)())   # no executable from another test
    monkeypatch.setattr(runner.jax, "jit", lambda *a, **k: compiles.append(1) or real_jit(*a, **k))
    assert cli.main(["run", "toy", "--seeds", "3", "--sweep", "kl_coef=0.5,1,2", "--out", str(tmp_path / "s"),
                     "--quiet"]) == 0
    assert len(compiles) == 1
    run_dir = tmp_path / "s" / "toy"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["sweep"]["traced"] == ["instance.kl_coef"]
    assert [c["shared"] for c in manifest["sweep"]["traced_calls"]] == [True] * 3
    assert manifest["sweep"]["grid"] == [["instance.kl_coef=0.5"], ["instance.kl_coef=1"], ["instance.kl_coef=2"]]
    swept = _table(run_dir)
    for kl in ("0.5", "1", "2"):
        assert cli.main(["run", "toy", "--seeds", "3", "--set", f"kl_coef={kl}", "--out", str(tmp_path / kl),
                         "--quiet"]) == 0
        alone = _table(tmp_path / kl / "toy")
        rows = swept["kl_coef"] == float(kl)
        assert rows.sum() == len(alone["seed"])
        for column, values in alone.items():
            if np.issubdtype(np.asarray(values).dtype, np.floating):
                np.testing.assert_allclose(swept[column][rows], values, rtol=1e-13, atol=0)
            else:
                np.testing.assert_array_equal(swept[column][rows], values)
        assert manifest["summary"][f"kl_coef={kl}/mean_value"] == pytest.approx(
            json.loads((tmp_path / kl / "toy" / "manifest.json").read_text())["summary"]["mean_value"], rel=1e-13)
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["kl_coef=0.5", "kl_coef=1", "kl_coef=2"]
    assert (run_dir / "kl_coef=1" / "toy.png").is_file()
    assert manifest["figures"] == [f"kl_coef={kl}/toy.{ext}" for kl in ("0.5", "1", "2")
                                   for ext in ("png", "svg")]
    assert manifest["sweep"]["columns"] == {"kl_coef": "kl_coef"}


def test_a_grid_is_the_product_with_a_column_per_field_and_replots_per_point(toy, tmp_path):
    assert cli.main(["run", "toy", "--seeds", "2", "--sweep", "kl_coef=0.5,1", "--sweep", "method=exact,shifted",
                     "--set", "shift=0.25", "--out", str(tmp_path), "--quiet"]) == 0
    run_dir = tmp_path / "toy"
    table = _table(run_dir)
    pairs = sorted(set(zip(table["kl_coef"].tolist(), table["method"].tolist())))
    assert pairs == [(0.5, "exact"), (0.5, "shifted"), (1.0, "exact"), (1.0, "shifted")]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["sweep"]["traced"] == ["instance.kl_coef"]   # a string field is never traced
    value = {(k, m): np.unique(table["value"][(table["kl_coef"] == k) & (table["method"] == m)]) for k, m in pairs}
    np.testing.assert_allclose(np.sort(value[(0.5, "shifted")]), np.sort(value[(0.5, "exact")]) + 0.25, rtol=1e-12)
    for folder in ("kl_coef=0.5,method=exact", "kl_coef=1,method=shifted"):
        (run_dir / folder / "toy.png").unlink()
    assert cli.main(["plot", str(run_dir)]) == 0
    assert (run_dir / "kl_coef=1,method=shifted" / "toy.png").is_file()
    assert (run_dir / "kl_coef=0.5,method=exact" / "toy.png").is_file()
    assert json.loads((run_dir / "manifest.json").read_text())["figures"] == [
        f"kl_coef={k},method={m}/toy.{ext}" for k in ("0.5", "1") for m in ("exact", "shifted")
        for ext in ("png", "svg")]


@pytest.mark.parametrize("argv, words", [
    (["--sweep", "kl_coef"], "sweep='kl_coef' is not allowed: write FIELD=V1,V2,..."),
    (["--sweep", "kl_coef="], "sweep='kl_coef=' is not allowed: write FIELD=V1,V2,..."),
    (["--sweep", "kl_coef=1,,2"], "sweep='kl_coef=1,,2' is not allowed: write FIELD=V1,V2,..."),
    (["--sweep", "nope=1,2"], "sweep field 'nope' is not a field of ToyConfig (allowed:"),
    (["--sweep", "sizes=4,16"], "sweep field 'sizes' is a tuple"),
    (["--sweep", "kl_coef=1,2", "--sweep", "kl_coef=3"], "sweep field 'kl_coef' is given twice"),
    (["--sweep", "kl_coef=1,1"], "sweep='kl_coef=1,1' is not allowed: a value is repeated"),
    (["--sweep", "kl_coef=1,-1"], "sweep point kl_coef=-1:"),
    (["--sweep", "kl_coef=1,2", "--seed-range", "0:2"], "--sweep is not allowed with --seed-range"),
    (["--sweep", "kl_coef=1,2", "--distributed"], "--sweep is not allowed with --distributed"),
])
def test_bad_sweeps_are_one_line_and_write_nothing(toy, argv, words, tmp_path, capsys):
    code = cli.main(["run", "toy", "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_USAGE and len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "toy" / "results.csv").exists()
