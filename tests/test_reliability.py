"""Regression tests of the reliability issue: run identity (code, plugins, exact setting names), unreadable
chunks, locks, permissions, one-line errors with distinct exit codes, safe plugins in ``plot``, memory checks.

The table of the reported cases and where each is covered lives in ``tests/test_cli_fuzz.py`` (CASES)."""
from __future__ import annotations

import functools
import json
import os
import stat
import textwrap

import jax
import numpy as np
import pytest

from experiments.engine import cli, registry, runner, storage
from experiments.engine.results import Results
from experiments.engine.runner import Progress, run_vectorized, seed_keys
from tests.test_engine import ToyExperiment

PLUGIN = textwrap.dedent('''
    """A plugin that registers a two-stage experiment; stage b fails while STOP exists (an interruption)."""
    import dataclasses, functools, os
    import jax, numpy as np
    from experiments.engine import registry
    from experiments.engine.results import Results, tidy
    from experiments.engine.runner import run_vectorized, seed_keys

    SHIFT = {shift}
    STOP = {stop!r}

    @dataclasses.dataclass(frozen=True)
    class Config:
        seed: int = 0

    def one_seed(key, shift):
        return jax.random.uniform(key) + shift

    class Staged:
        presets = {{"quick": Config()}}
        def run(self, config, seeds, progress):
            keys = seed_keys(config.seed, seeds)
            a = run_vectorized(one_seed, keys, np.float64(SHIFT), progress=progress, tag="a")
            if os.path.exists(STOP):
                raise KeyboardInterrupt
            b = run_vectorized(one_seed, keys, np.float64(0.0), progress=progress, tag="b")
            return Results(tidy({{"a": a, "b": b}}, seed=np.arange(seeds)))
        def plot(self, table, config, out_dir):
            return []

    registry.register("staged", Staged(), replace=True)
''')


def _write_plugin(path, shift, stop):
    path.write_text(PLUGIN.format(shift=shift, stop=str(stop)))


def test_an_edited_plugin_never_reuses_the_chunks_of_the_old_one(tmp_path, capsys):
    plugin, stop = tmp_path / "staged.py", tmp_path / "STOP"
    _write_plugin(plugin, 0.0, stop)
    stop.touch()
    try:
        assert cli.main(["run", "staged", "--seeds", "3", "--out", str(tmp_path / "runs"), "--plugin", str(plugin)]) \
            == cli.EXIT_INTERRUPTED
        assert "interrupted; finished chunks are kept" in capsys.readouterr().err
        assert list((tmp_path / "runs" / "staged" / ".chunks").rglob("chunk_0.npz"))
        _write_plugin(plugin, 10.0, stop)      # the user edits the plugin, then resumes
        stop.unlink()
        for name in [n for n in list(os.sys.modules) if n.startswith("rlhf_bandits_plugin_staged")]:
            del os.sys.modules[name]           # a new process would import the edited file
        assert cli.main(["run", "staged", "--seeds", "3", "--out", str(tmp_path / "runs"), "--plugin", str(plugin)]) == 0
        err = capsys.readouterr().err
        assert "not reusing them" in err and "reused" not in err.split("not reusing them")[1]
        table = storage.read_results(tmp_path / "runs" / "staged")
        assert np.all(table["a"] >= 10.0)      # computed by the edited plugin, not taken from the old chunks
        manifest = storage.read_manifest(tmp_path / "runs" / "staged")
        assert manifest["plugin_sha256"] == {str(plugin.resolve()): storage.file_digest(plugin)}
    finally:
        registry.unregister("staged")


def test_the_code_digest_covers_every_source_file(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "mod.py").write_text("Y = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(storage, "PACKAGES", ("fakepkg",))
    first = storage.code_digest()
    (pkg / "mod.py").write_text("Y = 3\n")
    assert storage.code_digest() != first
    assert storage.code_digest() == storage.code_digest()


def test_calls_that_share_a_tag_but_not_their_arguments_keep_separate_chunks(tmp_path):
    store = storage.ChunkStore(tmp_path / "chunks")
    fn = functools.partial(lambda key, shift, scale: jax.random.uniform(key) * scale + shift, scale=1.0)
    keys = seed_keys(0, 2)
    first = run_vectorized(fn, keys, np.float64(0.21), progress=Progress(store=store), tag="coverage+0.2")
    second = run_vectorized(fn, keys, np.float64(0.24), progress=Progress(store=store), tag="coverage+0.2")
    np.testing.assert_allclose(second - first, 0.03)
    assert len({p.parent.name for p in store.root.rglob("chunk_0.npz")}) == 2


def test_offline_rate_names_each_coverage_by_its_exact_value():
    from experiments.catalogue import offline_rate
    from experiments.engine.config import replace
    names = [s[0] for s in replace(offline_rate.Config(), panel_coverages=(0.21, 0.24, -0.8, 0.0)).settings()]
    assert names == ["canonical", "coverage+0.21", "coverage+0.24", "coverage-0.8", "coverage+0.0"]


def test_an_unreadable_chunk_is_named_and_recomputed(tmp_path, monkeypatch):
    toy = ToyExperiment(chunk_size=2)
    registry.register("toy", toy, replace=True)
    try:
        reference = storage.read_results(cli.run_experiment("toy", seeds=4, out=tmp_path / "ref"))
        real_save = storage.ChunkStore.save

        def save_then_die(self, tag, index, start, stop, tree):
            path = real_save(self, tag, index, start, stop, tree)
            path.write_bytes(path.read_bytes()[:40])      # a truncated file (disk full, killed writer)
            raise KeyboardInterrupt

        monkeypatch.setattr(storage.ChunkStore, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            cli.run_experiment("toy", seeds=4, out=tmp_path)
        monkeypatch.setattr(storage.ChunkStore, "save", real_save)
        import io
        log = io.StringIO()
        run_dir = cli.run_experiment("toy", seeds=4, out=tmp_path, stream=log)
        assert "chunk_0.npz is unusable (BadZipFile" in log.getvalue() and "recomputing it" in log.getvalue()
        got = storage.read_results(run_dir)
        for k in reference:
            np.testing.assert_array_equal(got[k], reference[k])
    finally:
        registry.unregister("toy")


def test_a_second_run_into_the_same_directory_is_refused(tmp_path, capsys):
    registry.register("toy", ToyExperiment(), replace=True)
    try:
        (tmp_path / "toy").mkdir()
        with storage.RunLock(tmp_path / "toy"):
            assert cli.main(["run", "toy", "--seeds", "2", "--out", str(tmp_path)]) == cli.EXIT_BUSY
        assert "another run is writing" in capsys.readouterr().err
        assert not (tmp_path / "toy" / "results.csv").exists()
        assert cli.main(["run", "toy", "--seeds", "2", "--out", str(tmp_path)]) == 0   # the lock is released
    finally:
        registry.unregister("toy")


def test_written_files_follow_the_umask(tmp_path):
    registry.register("toy", ToyExperiment(), replace=True)
    old = os.umask(0o022)
    try:
        run_dir = cli.run_experiment("toy", seeds=2, out=tmp_path)
        for name in ("results.csv", "manifest.json", "toy.png"):
            assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o644, name
    finally:
        os.umask(old)
        registry.unregister("toy")


@pytest.mark.parametrize("argv, code, words", [
    (["run", "toy", "--seeds", "1000000000000"], cli.EXIT_USAGE, "seeds=1000000000000 is not allowed"),
    (["run", "toy", "--set", "seed=18446744073709551616"], cli.EXIT_USAGE, "seed=18446744073709551616 is not allowed"),
    (["run", "toy", "--set", "seed=-1"], cli.EXIT_USAGE, "seed=-1 is not allowed"),
    (["run", "offline-rate", "--set", "sample_sizes=64,9007199254740992"], cli.EXIT_USAGE,
     "sample_sizes=(64, 9007199254740992) is not allowed"),
    (["run", "offline-rate", "--set", "n_contexts=1e15"], cli.EXIT_USAGE, "n_contexts=1000000000000000 is not allowed"),
    (["run", "online-explore", "--set", "iterations=0"], cli.EXIT_USAGE,
     "iterations=0 is not allowed: iterations must be an integer >= 1"),
    (["run", "lm-rejection", "--set", "vocab_size=50", "length=8"], cli.EXIT_USAGE,
     "TreeConfig must be a table of at most 10000000 logits"),   # was a traceback from inside the compile
    (["run", "lm-omd-features", "--set", "vocab_size=50", "length=8"], cli.EXIT_USAGE,
     "space must be a space with vocab_size**length <= 1000000 to be enumerated"),   # likewise
    (["run", "toy", "--out", "{file}"], cli.EXIT_FILES, "Not a directory"),
    (["run", "toy", "--out", "{file}/under"], cli.EXIT_FILES, "Not a directory"),
])
def test_bad_input_gives_one_line_and_a_distinct_exit_code(tmp_path, capsys, argv, code, words):
    registry.register("toy", ToyExperiment(), replace=True)
    (tmp_path / "file").write_text("x")
    argv = [a.format(file=tmp_path / "file") for a in argv]
    try:
        assert cli.main(argv) == code
    finally:
        registry.unregister("toy")
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_read_only_output_directory_is_one_line(tmp_path, capsys):
    if os.geteuid() == 0:
        # root writes anyway; make the directory a file's child instead, the same error path (OSError)
        target = tmp_path / "file" / "out"
        (tmp_path / "file").write_text("x")
    else:
        target = tmp_path / "ro"
        target.mkdir(mode=0o500)
    registry.register("toy", ToyExperiment(), replace=True)
    try:
        assert cli.main(["run", "toy", "--seeds", "2", "--out", str(target)]) == cli.EXIT_FILES
    finally:
        registry.unregister("toy")
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_interrupt_and_missing_dependency_are_one_line(monkeypatch, capsys):
    from bandits.validation import MissingDependencyError

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    def missing(*a, **k):
        raise MissingDependencyError("the Hugging Face adapter needs torch; pip install 'rlhf-bandits[llm]'")

    monkeypatch.setattr(cli, "run_experiment", interrupted)
    assert cli.main(["run", "offline-rate"]) == cli.EXIT_INTERRUPTED
    monkeypatch.setattr(cli, "run_experiment", missing)
    assert cli.main(["run", "offline-rate"]) == cli.EXIT_DEPENDENCY
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "rlhf-bandits[llm]" in err[1] and "Traceback" not in "".join(err)


def test_a_ragged_results_file_is_one_line_in_plot(tmp_path, capsys):
    registry.register("toy", ToyExperiment(), replace=True)
    try:
        run_dir = cli.run_experiment("toy", seeds=2, out=tmp_path)
        lines = (run_dir / "results.csv").read_text().splitlines()
        (run_dir / "results.csv").write_text("\n".join(lines[:2] + [lines[2].rsplit(",", 1)[0]] + lines[3:]) + "\n")
        manifest = storage.read_manifest(run_dir)
        manifest["results"]["sha256"] = None
        storage.write_manifest(run_dir, manifest)
        assert cli.main(["plot", str(run_dir)]) == cli.EXIT_USAGE
    finally:
        registry.unregister("toy")
    err = capsys.readouterr().err
    assert "malformed: line 3" in err and len(err.strip().splitlines()) == 1


def test_plot_imports_no_plugin_unless_asked_and_checks_the_recorded_hash(tmp_path, capsys):
    registry.register("toy", ToyExperiment(), replace=True)
    marker = tmp_path / "MARKER"
    try:
        run_dir = cli.run_experiment("toy", seeds=2, out=tmp_path / "runs")
        sent = run_dir / "evil.py"                            # a file that came with a run someone sent
        sent.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
        manifest = storage.read_manifest(run_dir)
        manifest["plugins"], manifest["plugin_sha256"] = ["evil.py"], {"evil.py": storage.file_digest(sent)}
        storage.write_manifest(run_dir, manifest)
        os.chdir(run_dir)
        assert cli.main(["plot", "."]) == cli.EXIT_USAGE
        assert "a plugin is code" in capsys.readouterr().err and not marker.exists()
        sent.write_text(sent.read_text() + "# edited\n")
        assert cli.main(["plot", ".", "--trust-plugins"]) == cli.EXIT_USAGE
        assert "does not match the SHA-256" in capsys.readouterr().err and not marker.exists()
        manifest["plugin_sha256"] = {"evil.py": storage.file_digest(sent)}
        storage.write_manifest(run_dir, manifest)
        assert cli.main(["plot", ".", "--trust-plugins"]) == 0 and marker.exists()
    finally:
        os.chdir(tmp_path)
        registry.unregister("toy")


@pytest.mark.parametrize("held", [0, 10**9])
def test_a_chunk_over_the_memory_cap_runs_smaller_and_one_that_cannot_fit_is_refused(held, monkeypatch):
    """On CPU ``max_memory`` caps the whole process: what it already holds (``resident_memory``) is taken off."""
    monkeypatch.setattr(runner, "resident_memory", lambda: held)
    fn = functools.partial(lambda key, n: jax.random.normal(key, (256, 256)).sum() + n, )
    keys = seed_keys(0, 8)
    whole = run_vectorized(fn, keys, np.float64(1.0), progress=Progress())
    import io
    log = io.StringIO()
    cap = Progress(stream=log, max_memory=held + 5 * 2**19)       # 2.5 MB: one seed, not eight
    part = run_vectorized(fn, keys, np.float64(1.0), progress=cap, tag="capped")
    assert "trying" in log.getvalue() and cap.calls[0]["chunk_size"] < 8
    np.testing.assert_allclose(part, whole, rtol=1e-12)
    with pytest.raises(runner.MemoryLimitError, match=r"one chunk of 1 seed.*estimate .* x 1.5 on CPU"):
        run_vectorized(fn, keys, np.float64(1.0), progress=Progress(max_memory=held + 1000), tag="tiny")
    assert Progress(max_memory=held + 1).memory_budget(jax.local_devices()) <= 1   # the cap, less what is held


def test_a_cpu_chunk_over_the_working_set_threshold_is_recompiled_smaller_with_the_same_results(monkeypatch):
    """On CPU, with no chunk size asked for, a whole chunk whose estimate exceeds ``CPU_RECHUNK_BYTES`` runs as
    chunks of about ``CPU_CHUNK_BYTES``; an explicit chunk size is kept as asked."""
    import io
    fn = functools.partial(lambda key, n: jax.random.normal(key, (256, 256)).sum() + n, )
    keys = seed_keys(0, 8)
    once = Progress()
    whole = run_vectorized(fn, keys, np.float64(1.0), progress=once, tag="whole")
    estimate = once.calls[0]["peak_memory_bytes"]          # 8 seeds in one chunk
    monkeypatch.setattr(runner, "CPU_RECHUNK_BYTES", estimate // 2)
    monkeypatch.setattr(runner, "CPU_CHUNK_BYTES", estimate // 4)  # about 2 seeds
    monkeypatch.setattr(runner, "_compiled", type(runner._compiled)())   # compile again, not reuse
    log = io.StringIO()
    auto = Progress(stream=log)
    part = run_vectorized(fn, keys, np.float64(1.0), progress=auto, tag="auto")
    assert "on CPU chunks of 2 seeds run faster" in log.getvalue()
    assert (auto.calls[0]["chunk_size"], auto.calls[0]["chunks"]) == (2, 4)
    np.testing.assert_allclose(part, whole, rtol=1e-12)
    asked = Progress(chunk_size=8)
    run_vectorized(fn, keys, np.float64(1.0), progress=asked, tag="asked")
    assert asked.calls[0]["chunk_size"] == 8


@pytest.mark.parametrize("estimate, size, devices, expected", [
    (9_762_080_696, 1024, 1, 8),    # offline-rate's paper program: 9.5 MB a seed, 64 MiB / 9.5 MB = 7.0
    (9_762_080_696, 1024, 3, 6),    # a multiple of the device count
    (508_317_404, 256, 1, 32),      # 1.99 MB a seed: 33.7 -> 32
    (2**40, 16, 2, 2),              # at least one seed per device
    (2**20, 4, 1, 4),               # never more than the chunk it replaces
])
def test_cpu_chunk_seeds_is_the_nearest_power_of_two_to_the_target(estimate, size, devices, expected):
    assert runner.cpu_chunk_seeds(estimate, size, devices) == expected


def test_the_budget_is_read_again_after_compiling(monkeypatch):
    """What the process holds once the program is compiled (the executable, the compiler's leftovers) counts:
    a chunk that fitted the budget before compiling but not after is made smaller."""
    reads = []

    def resident():   # 0 before compiling, 15 MB from then on
        reads.append(1)
        return 0 if len(reads) == 1 else 15 * 2**20

    monkeypatch.setattr(runner, "resident_memory", resident)
    fn = functools.partial(lambda key, n: jax.random.normal(key, (256, 256)).sum() + n, )
    import io
    log = io.StringIO()
    cap = Progress(stream=log, max_memory=18 * 2**20)     # 8 seeds fit 18 MB, not the 3 MB left after
    run_vectorized(fn, seed_keys(0, 8), np.float64(1.0), progress=cap, tag="after")
    assert "a chunk of 8 seeds needs" in log.getvalue() and cap.calls[0]["chunk_size"] < 8


def test_cgroup_limits_bound_the_free_memory_v1_nested_and_v2(tmp_path):
    """A container's memory cgroup is a limit ``MemAvailable`` does not show: ``limit - usage`` (plus the page
    cache the kernel reclaims first) of every limiting level, v1 (the process's cgroup and its ancestors) or v2."""
    root = tmp_path / "cgroup"
    for folder, limit, usage, cache in (("memory", 2**63 - 4096, 10**9, 0), ("memory/job", 6 * 10**9, 2 * 10**9, 10**8),
                                        ("memory/job/step", 5 * 10**9, 10**9, 0)):
        (root / folder).mkdir(parents=True)
        (root / folder / "memory.limit_in_bytes").write_text(f"{limit}\n")
        (root / folder / "memory.usage_in_bytes").write_text(f"{usage}\n")
        (root / folder / "memory.stat").write_text(f"cache 5\ntotal_inactive_file {cache}\n")
    proc = tmp_path / "self_cgroup"
    proc.write_text("9:cpu,cpuacct:/other\n4:memory:/job/step\n0::/\n")
    assert sorted(runner._cgroup_free(str(root), str(proc))) == [4 * 10**9, 4 * 10**9 + 10**8]
    (root / "memory.max").write_text("3000000000\n")
    (root / "memory.current").write_text("1000000000\n")
    (root / "memory.stat").write_text("inactive_file 7\n")
    assert min(runner._cgroup_free(str(root), str(proc))) == 2 * 10**9 + 7
    (root / "memory.max").write_text("max\n")
    proc.write_text("0::/\n")
    assert runner._cgroup_free(str(root), str(proc)) == []


def test_memory_refusal_through_the_cli_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "resident_memory", lambda: 0)
    registry.register("toy", ToyExperiment(), replace=True)
    try:
        assert cli.main(["run", "toy", "--seeds", "2", "--out", str(tmp_path), "--max-memory", "4e-7"]) \
            == cli.EXIT_MEMORY    # 400 bytes: above the toy instance's 384-byte floor
    finally:
        registry.unregister("toy")
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]       # after the progress lines: one error line, no traceback
    assert last.startswith("rlhf-bandits run: error: call0: one chunk of 1 seed(s) needs") and "GB" in last
    assert "Traceback" not in err
    assert not (tmp_path / "toy" / "results.csv").exists()


def test_a_summary_that_fails_never_loses_the_results(tmp_path, capsys):
    """Issue 14: the table, manifest and figures are written before the summary is computed; a summary that
    raises leaves an empty summary, its reason in the manifest's ``summary_error``, exit 7 and one line."""
    class BrokenSummary(ToyExperiment):
        def run(self, config, seeds, progress):
            table = ToyExperiment.run(self, config, seeds, progress).table

            def summarize():
                raise FloatingPointError("a statistic of the toy cannot be computed")
            return Results(table, summarize)

    registry.register("toy", BrokenSummary(), replace=True)
    try:
        code = cli.main(["run", "toy", "--seeds", "2", "--out", str(tmp_path)])
    finally:
        registry.unregister("toy")
    assert code == cli.EXIT_SUMMARY == 7
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("rlhf-bandits run: error: ")
    assert "summary could not be computed (FloatingPointError: a statistic of the toy" in last
    run = tmp_path / "toy"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["summary"] == {} and manifest["summary_error"].startswith("FloatingPointError: a statistic")
    assert (run / "results.csv").exists() and manifest["results"]["rows"] == 2 * len(ToyExperiment.presets["quick"].sizes)
    assert manifest["figures"]
    # a lazy summary is computed once; an eager one is checked at once, as before
    calls = []
    lazy = Results({"a": np.zeros(2)}, lambda: calls.append(1) or {"m": np.float64(1.5)})
    assert calls == [] and lazy.summary == {"m": 1.5} and lazy.summary == {"m": 1.5} and calls == [1]
    with pytest.raises(ValueError, match="must be a scalar"):
        Results({"a": np.zeros(2)}, {"m": np.zeros(2)})
    assert Results({"a": np.zeros(2)}, lambda: {"m": np.zeros(2)}).safe_summary()[1].startswith("ValueError")


def test_an_instance_no_device_can_hold_is_refused_before_compiling(tmp_path, capsys, monkeypatch):
    """100000 x 100000 actions (issue 14 case 5): refused from the config alone, naming the fields; the floor
    is (d + 2) n_x K numbers (features, reward, log pi0)."""
    from experiments.engine import runner
    config = registry.get("offline-rate").presets["quick"]
    from experiments.engine.config import apply_overrides
    big = apply_overrides(config, ["n_actions=100000", "n_contexts=100000"])
    assert runner.instance_floor(big, 8)[0] == (big.instance.dim + 2) * 10 ** 10 * 8
    assert runner.instance_floor(object(), 8) is None
    compiled = []
    monkeypatch.setattr(runner, "_run_vectorized", lambda *a, **k: compiled.append(1))
    code = cli.main(["run", "offline-rate", "--preset", "quick", "--out", str(tmp_path),
                     "--set", "n_actions=100000", "n_contexts=100000"])
    assert code == cli.EXIT_MEMORY and not compiled
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("rlhf-bandits run: error: one seed's instance tables alone (n_contexts x n_actions x "
                           "(dim + 2) = 100000 x 100000 x 10 numbers of 8 bytes) need 800 GB"), last
    assert "Traceback" not in err and not (tmp_path / "offline-rate" / "results.csv").exists()


def test_the_compilation_cache_is_per_user_by_default_and_can_be_turned_off(tmp_path, monkeypatch):
    from experiments.engine import compile_cache
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.cache_dir() == tmp_path / "xdg" / "rlhf-bandits" / "jax"
    for off in ("0", "off", "False"):
        monkeypatch.setenv(compile_cache.ENV, off)
        assert compile_cache.cache_dir() is None and compile_cache.enable() is None
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "mine"))
    assert compile_cache.cache_dir() == tmp_path / "mine"


def test_a_slope_that_cannot_be_fitted_is_recorded_as_missing_with_its_reason():
    from experiments.engine import stats
    x = np.array([16.0, 64.0, 256.0])
    ok = stats.slope_summary("s", x, np.tile(x ** -0.5, (4, 1)))
    assert abs(ok["s/slope"] + 0.5) < 1e-12 and "s/slope_missing" not in ok
    for y, why in ((np.tile([1.0, np.inf, 0.5], (4, 1)), "not finite"), (np.zeros((4, 3)), "<= 0"),
                   (np.ones((4, 1)), "fewer than two")):
        got = stats.slope_summary("s", x[: y.shape[1]], y)
        assert np.isnan(got["s/slope"]) and why in got["s/slope_missing"]
