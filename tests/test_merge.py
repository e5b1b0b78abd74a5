"""Seed ranges that merge: ``run --seed-range`` computes exactly those seeds, ``merge`` joins disjoint ranges into
the run a single call writes (results.csv byte for byte, the summary recomputed), and bad ranges or
mismatched runs are refused with one line."""
from __future__ import annotations

import functools
import json
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.engine import cli, registry, runner, storage
from experiments.engine.merge import WALL_CLOCK_COLUMNS
from experiments.engine.results import Results, tidy
from experiments.engine.runner import run_vectorized, seed_keys
from tests.test_engine import ToyExperiment


class Toy(ToyExperiment):
    """The engine tests' toy without figures (drawing them is most of a toy run's time; tested elsewhere)."""

    def plot(self, table, config, out_dir):
        return []


class TimedToy(Toy):
    """The toy plus a wall-clock column measured on seed 0 only (as the P3 experiments' ``seconds``)."""

    def run(self, config, seeds, progress):
        results = super().run(config, seeds, progress)
        table = dict(results.table)
        t0 = time.perf_counter()
        sum(range(1000))
        table["seconds"] = np.where(table["seed"] == 0, time.perf_counter() - t0, np.nan)
        return type(results)(table, results.summary)


@pytest.fixture(autouse=True)
def same_code(monkeypatch):
    """One source digest and revision for the whole test (others may edit the checkout meanwhile; reading
    every source file and calling git per run is also most of the rest of a toy run's time)."""
    monkeypatch.setattr(storage, "code_digest", lambda: "source-A")
    monkeypatch.setattr(storage, "git_revision", lambda path=None: {"revision": "A", "dirty": False})


@pytest.fixture
def toy():
    registry.register("toy", Toy(chunk_size=2), replace=True)
    yield
    registry.unregister("toy")


def _run(argv, capsys=None):
    code = cli.main(argv)
    return code, (capsys.readouterr() if capsys is not None else None)


def _ranges(root, *ranges, extra=()):
    dirs = []
    for start, stop in ranges:
        assert cli.main(["run", "toy", "--seed-range", f"{start}:{stop}", "--out", str(root), *extra]) == 0
        dirs.append(root / f"toy-seeds-{start}-{stop}")
    return dirs


def test_merged_seed_ranges_equal_the_single_run(toy, tmp_path, monkeypatch, capsys):
    assert cli.main(["run", "toy", "--seeds", "4", "--out", str(tmp_path / "single")]) == 0
    executed = []
    real = runner._run_chunk
    monkeypatch.setattr(runner, "_run_chunk",
                        lambda c, keys, args: executed.append(keys.shape[0]) or real(c, keys, args))
    dirs = _ranges(tmp_path / "ranges", (2, 4), (0, 2))
    assert executed == [2, 2]                  # one chunk of exactly its two seeds per range, nothing else
    single = storage.read_results(tmp_path / "single" / "toy")
    part = storage.read_results(dirs[0])       # a range's own rows are the single run's rows of its seeds
    rows = np.isin(single["seed"], [2, 3])
    assert all(np.array_equal(part[c], single[c][rows]) for c in single)
    manifest = storage.read_manifest(dirs[0])
    assert manifest["seed_range"] == [2, 4] and manifest["seeds"] == 2 and manifest["summary"] == {}

    executed.clear()
    capsys.readouterr()
    assert cli.main(["merge", str(tmp_path / "merged"), *map(str, dirs)]) == 0
    assert executed == []                      # the merge replays the saved outputs: nothing runs
    assert capsys.readouterr().out.strip() == str(tmp_path / "merged" / "toy")
    one, both = tmp_path / "single" / "toy", tmp_path / "merged" / "toy"
    assert (both / "results.csv").read_bytes() == (one / "results.csv").read_bytes()
    a, b = storage.read_manifest(one), storage.read_manifest(both)
    assert b["summary"] == a["summary"] and b["seeds"] == 4 and b["config_hash"] == a["config_hash"]
    assert [m["seed_range"] for m in b["merged_from"]] == [[0, 2], [2, 4]]
    assert b["results"]["sha256"] == a["results"]["sha256"] and b["figures"] == a["figures"] == []
    assert "seed_range" not in b and "outputs" not in b


def test_wall_clock_columns_are_named_and_the_rest_is_identical(tmp_path):
    registry.register("toy", TimedToy(chunk_size=2), replace=True)
    try:
        assert cli.main(["run", "toy", "--seeds", "4", "--out", str(tmp_path / "single")]) == 0
        dirs = _ranges(tmp_path / "ranges", (0, 2), (2, 4))
        assert cli.main(["merge", str(tmp_path / "merged"), *map(str, dirs)]) == 0
    finally:
        registry.unregister("toy")
    one, both = (storage.read_results(tmp_path / d / "toy") for d in ("single", "merged"))
    assert list(one) == list(both) and WALL_CLOCK_COLUMNS == ("seconds",)
    for column in one:
        if column not in WALL_CLOCK_COLUMNS:
            assert np.array_equal(one[column], both[column]), column
    assert np.array_equal(np.isnan(one["seconds"]), np.isnan(both["seconds"]))
    assert storage.read_manifest(tmp_path / "merged" / "toy")["wall_clock"]["columns"] == ["seconds"]


@pytest.mark.parametrize("text", ["a:b", "4", "3:3", "5:2", "-1:2", "0:2147483648", "0:1e3", "1:2:3", ":4"])
def test_bad_seed_ranges_are_one_line(toy, tmp_path, capsys, text):
    code, captured = _run(["run", "toy", f"--seed-range={text}", "--out", str(tmp_path)], capsys)
    lines = captured.err.strip().splitlines()
    assert code == cli.EXIT_USAGE and len(lines) == 1 and "Traceback" not in captured.err
    assert "--seed-range" in lines[0] and repr(text) in lines[0] and "0 <= START < STOP <= 2147483647" in lines[0]
    assert not any(tmp_path.iterdir())


def test_seed_range_and_seeds_together_are_refused(toy, tmp_path, capsys):
    code, captured = _run(["run", "toy", "--seeds", "4", "--seed-range", "0:2", "--out", str(tmp_path)], capsys)
    assert code == cli.EXIT_USAGE and "not allowed with argument" in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_bad_merge_inputs_are_one_line_and_write_nothing(toy, tmp_path, capsys, monkeypatch):
    root = tmp_path / "ranges"
    first, second, overlap, far = _ranges(root, (0, 2), (2, 4), (1, 3), (4, 6))
    other = root / "other"
    shutil.copytree(second, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["config"]["shift"] = 0.5
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert cli.main(["run", "toy", "--seeds", "2", "--out", str(root / "full")]) == 0
    newer = root / "newer"
    shutil.copytree(second, newer)
    manifest["config"]["shift"] = 0.0
    manifest["code_sha256"] = "source-B"
    (newer / "manifest.json").write_text(json.dumps(manifest))
    bad = root / "bad"
    shutil.copytree(second, bad)
    output = next((bad / "outputs").iterdir())
    output.write_bytes(output.read_bytes()[:-3])
    out = tmp_path / "merged"
    cases = [
        ([first, other], 2, ["differ in config", "shift=0.0 vs 0.5"]),
        ([first, newer], 2, ["differ in source digest", "'source-A' vs 'source-B'"]),
        ([first, overlap], 2, ["seeds 1-1 are in both", "overlap"]),
        ([first, second, first], 2, ["seeds 0-1 are in both"]),
        ([first, far], 2, ["seeds 2-3 are in none of the runs", "--seed-range 2:4"]),
        ([second], 2, ["seeds 0-1 are in none of the runs"]),
        ([first, root / "nope"], 3, ["no such run directory", "nope"]),
        ([first, root / "full" / "toy"], 2, ["is not a seed-range run"]),
        ([first, bad], 2, ["is not the file its run saved", "run that range again"]),
    ]
    for dirs, code, words in cases:
        capsys.readouterr()
        got, captured = _run(["merge", str(out), *map(str, dirs)], capsys)
        lines = captured.err.strip().splitlines()
        assert got == code and len(lines) == 1, (dirs, captured.err)
        assert lines[0].startswith("rlhf-bandits merge: error: ") and "Traceback" not in captured.err
        for word in words:
            assert word in lines[0], (word, lines[0])
        assert not out.exists()
    monkeypatch.setattr(storage, "code_digest", lambda: "source-B")   # merge replays the code: it must be the same
    got, captured = _run(["merge", str(out), str(first), str(second)], capsys)
    assert got == 2 and "computed by source digest source-A, this checkout is source-B" in captured.err


def _calibrate(key):
    return jax.random.normal(key)


def _draw(key):
    return jax.random.uniform(key, (3,))


def _square(x, c):
    return x ** 2 + c


class DerivedToy(Toy):
    """Three kinds of call: a calibration over its own seeds (a whole call, reused by the merge), the seeds'
    draws (a seed call) and a call over the draws (a batch derived from the seeds' outputs: recomputed)."""

    def run(self, config, seeds, progress):
        calibration = run_vectorized(functools.partial(_calibrate), seed_keys(config.seed, 3, start=1000),
                                     progress=progress, tag="calibration")
        draws = run_vectorized(functools.partial(_draw), seed_keys(config.seed, seeds), progress=progress, tag="draw")
        out = run_vectorized(functools.partial(_square), jnp.asarray(draws), float(np.median(calibration)),
                             progress=progress, tag="square")
        return Results(tidy({"y": out}, seed=np.arange(seeds), j=np.arange(3)), {"mean_y": float(out.mean())})


@pytest.mark.parametrize("flag", [(), ("--chunk-size", "2")])
def test_whole_calls_are_reused_and_calls_over_derived_batches_recomputed(tmp_path, monkeypatch, flag):
    registry.register("toy", DerivedToy(), replace=True)
    executed = []
    real = runner._run_chunk
    monkeypatch.setattr(runner, "_run_chunk",
                        lambda c, keys, args: executed.append(keys.shape[0]) or real(c, keys, args))
    try:
        assert cli.main(["run", "toy", "--seeds", "4", "--out", str(tmp_path / "single"), *flag]) == 0
        executed.clear()
        dirs = _ranges(tmp_path / "ranges", (0, 1), (1, 4), extra=flag)
        if not flag:   # calibration whole, draws of the range only, the derived call over 0..STOP-1
            assert executed == [3, 1, 1, 3, 3, 4]
        executed.clear()
        assert cli.main(["merge", str(tmp_path / "merged"), *map(str, dirs)]) == 0
        # only the call over the merged draws runs again, in the ranges' chunks
        assert executed == ([2, 2] if flag else [4])
    finally:
        registry.unregister("toy")
    one, both = (tmp_path / d / "toy" for d in ("single", "merged"))
    assert (both / "results.csv").read_bytes() == (one / "results.csv").read_bytes()
    assert storage.read_manifest(both)["summary"] == storage.read_manifest(one)["summary"]
