"""The experiment engine: overrides, seed keys, the vectorized/sharded runner, storage, resumption, plots."""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bandits as b
from experiments.engine import cli, plotting, registry, runner, storage, stats
from experiments.engine.config import (apply_overrides, check_unused, config_from_dict, config_hash, config_to_dict,
                                      replace, settable_fields, short_names)
from experiments.engine.results import Results, as_results, tidy
from experiments.engine.runner import Progress, run_vectorized, seed_keys

ROOT = Path(__file__).resolve().parents[1]


# ---- a tiny test-only experiment: exact values of a small instance and label rates at a few sizes ----

@dataclasses.dataclass(frozen=True)
class ToyConfig:
    instance: b.InstanceConfig = b.InstanceConfig(n_contexts=3, n_actions=4, dim=2)
    sizes: tuple[int, ...] = (4, 16)
    weights: tuple[float, ...] = (1.0,)
    method: Literal["exact", "shifted"] = "exact"
    shift: float = 0.0
    verbose: bool = False
    label: str = "toy"
    window: tuple[int, float] = (1, 0.5)
    cap: int | None = None
    seed: int = 0

    def __post_init__(self):
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"sizes={self.sizes!r} is not allowed: sizes must be integers >= 1.")


def toy_one_seed(key, sizes, config: ToyConfig):
    """Per-seed pure function: exact values of one small instance and label means over prefixes.

    One uniform draw builds the instance and the labels (random-number code is slow to compile).
    """
    n_x, k, d = config.instance.n_contexts, config.instance.n_actions, config.instance.dim
    n_max = max(config.sizes)
    u = jax.random.uniform(key, (n_x * k * (d + 1) + n_max,), minval=-1.0, maxval=1.0)
    cells = u[: n_x * k * (d + 1)].reshape(n_x, k, d + 1)
    phi = cells[..., :d] / jnp.linalg.norm(cells[..., :d], axis=-1, keepdims=True)
    reward = config.instance.reward_norm * phi[..., 0]
    log_pi0 = jax.nn.log_softmax(config.instance.temperature * cells[..., d], axis=-1)
    inst = b.instance_from_arrays(phi, log_pi0, reward, config.instance.kl_coef)
    win = b.win_rate(inst, b.optimal_policy(inst), inst.log_pi0)
    labels = (0.5 * (u[-n_max:] + 1.0) < win).astype(u.dtype)
    shift = config.shift if config.method == "shifted" else 0.0
    return {"value": b.optimal_value(inst) + shift,
            "subopt_pi0": b.suboptimality(inst, inst.log_pi0),
            "win_rate": win,
            "label_mean": jnp.cumsum(labels)[sizes - 1] / sizes}


class ToyExperiment:
    """Toy: exact values of tiny instances (test only)."""

    presets = {"quick": ToyConfig(), "paper": ToyConfig(sizes=(4, 16, 64))}
    seeds = {"quick": 4, "paper": 6}
    description = "toy experiment for the engine tests"

    def __init__(self, chunk_size=None, fail_after_run=False, fail_plot=False):
        self.chunk_size, self.fail_after_run, self.fail_plot = chunk_size, fail_after_run, fail_plot

    def run(self, config, seeds, progress):
        sizes = np.asarray(config.sizes)
        out = run_vectorized(functools.partial(toy_one_seed, config=config), seed_keys(config.seed, seeds),
                             sizes, chunk_size=self.chunk_size, progress=progress)
        if self.fail_after_run:
            raise RuntimeError("simulated crash after the computation")
        seed = np.arange(seeds)
        table = tidy({"label_mean": out["label_mean"],
                      "value": np.repeat(out["value"][:, None], len(sizes), 1)}, seed=seed, n=sizes)
        return Results(table, {"mean_value": out["value"].mean(), "mean_win_rate": out["win_rate"].mean()})

    def plot(self, table, config, out_dir):
        if self.fail_plot:
            raise RuntimeError("simulated plotting bug")
        fig, ax = plotting.figure()
        x, y = plotting.pivot(table, x="n", y="label_mean")
        plotting.band_plot(ax, x, y, label=config.label, loglog=True, slope=True)
        plotting.bound_plot(ax, x, 0.5 * x ** -0.5, label="0.5 n^-1/2")
        ax.set(title="Toy label mean", xlabel="n", ylabel="label mean")
        return plotting.save_figure(fig, out_dir, "toy")


@pytest.fixture
def toy():
    exp = ToyExperiment()
    registry.register("toy", exp, replace=True)
    yield exp
    registry.unregister("toy")


# ---- config overrides ----

def test_overrides_parse_every_supported_type():
    cfg = apply_overrides(ToyConfig(), [
        "sizes=(2, 8,32)", "weights=0.5,1", "method=shifted", "shift=-1e-1", "verbose=yes",
        "label='a b'", "window=3,2.5", "cap=7", "seed=1e3", "instance.kl_coef=0.25",
        "instance.n_actions=5", "instance.reward=neural"])
    assert cfg.sizes == (2, 8, 32) and cfg.weights == (0.5, 1.0) and cfg.method == "shifted"
    assert cfg.shift == -0.1 and cfg.verbose is True and cfg.label == "a b" and cfg.window == (3, 2.5)
    assert cfg.cap == 7 and cfg.seed == 1000 and isinstance(cfg.seed, int)
    assert cfg.instance == dataclasses.replace(ToyConfig().instance, kl_coef=0.25, n_actions=5,
                                               reward="neural")
    assert apply_overrides(cfg, ["cap=none", "sizes=4,", "verbose=False"]).cap is None
    assert apply_overrides(cfg, ["sizes=4,"]).sizes == (4,)
    assert apply_overrides(cfg, ["seed=1", "seed=2"]).seed == 2  # the last one wins
    assert apply_overrides(ToyConfig(), []) == ToyConfig()


@dataclasses.dataclass(frozen=True)
class _Ridge:
    lam: float = 1.0


@dataclasses.dataclass(frozen=True)
class _Steps:
    lam: float = 2.0
    eta: float = 0.5


@dataclasses.dataclass(frozen=True)
class NestedConfig:
    instance: b.InstanceConfig = b.InstanceConfig(n_contexts=3, n_actions=4, dim=2)
    ridge: _Ridge = _Ridge()
    steps: _Steps = _Steps()
    seed: int = 0

    def __post_init__(self):
        check_unused(self, ("instance.temperature",), "this toy always uses a uniform pi0")


def test_short_names_reach_nested_fields_and_ambiguity_is_refused():
    names = short_names(NestedConfig)
    assert names["kl_coef"] == "instance.kl_coef" and names["eta"] == "steps.eta"
    assert names["lam"] == ("ridge.lam", "steps.lam") and "seed" not in names
    cfg = apply_overrides(NestedConfig(), ["kl_coef=0.3", "eta=0.1", "ridge.lam=3", "n_actions=5"])
    assert cfg.instance == dataclasses.replace(NestedConfig().instance, kl_coef=0.3, n_actions=5)
    assert (cfg.ridge.lam, cfg.steps.lam, cfg.steps.eta) == (3.0, 2.0, 0.1)
    with pytest.raises(ValueError, match="'lam' is ambiguous.*ridge.lam, steps.lam"):
        apply_overrides(NestedConfig(), ["lam=3"])
    with pytest.raises(ValueError, match=r"allowed fields:.*kl_coef \(instance.kl_coef\).*ridge.lam"):
        apply_overrides(NestedConfig(), ["nosuch=1"])
    assert replace(NestedConfig(), kl_coef=0.2, steps__lam=5.0, seed=3) == apply_overrides(
        NestedConfig(), ["instance.kl_coef=0.2", "steps.lam=5", "seed=3"])


def test_unused_nested_field_is_refused_with_its_reason():
    with pytest.raises(ValueError, match="temperature=2.0 is not allowed: this toy always uses a uniform pi0, so "
                                         "instance.temperature is not read"):
        apply_overrides(NestedConfig(), ["temperature=2"])
    assert apply_overrides(NestedConfig(), ["temperature=0"]) == NestedConfig()


def test_flat_records_of_moved_fields_are_read_into_their_nested_config():
    """A manifest written before a field moved into a nested config still loads (``plot`` of old runs)."""
    record = config_to_dict(replace(NestedConfig(), kl_coef=0.7, eta=0.2))
    flat = {k: v for k, v in record.items() if k not in ("instance", "steps")}
    flat.update(record["instance"], eta=0.2)
    assert config_from_dict(NestedConfig, flat) == replace(NestedConfig(), kl_coef=0.7, eta=0.2)


@pytest.mark.parametrize("override, words", [
    ("nosuch=1", ["unknown field 'nosuch'", "allowed fields:", "sizes", "instance.kl_coef", "seed"]),
    ("instance.nosuch=1", ["unknown field 'instance.nosuch'", "instance.kl_coef", "instance.n_actions"]),
    ("seed.x=1", ["seed is not a nested config"]),
    ("instance=3", ["instance is a nested config", "instance.kl_coef"]),
    ("seed", ["must look like field=value"]),
    ("=3", ["must look like field=value"]),
    ("seed=abc", ["seed='abc'", "expected an integer"]),
    ("seed=1.5", ["seed='1.5'", "expected an integer"]),
    ("shift=fast", ["shift='fast'", "expected a number"]),
    ("verbose=maybe", ["verbose='maybe'", "boolean"]),
    ("method=other", ["method='other'", "one of 'exact', 'shifted'"]),
    ("sizes=1,x", ["sizes='1,x'", "tuple of (an integer)"]),
    ("window=1,2,3", ["window='1,2,3'", "a tuple of 2 values"]),
    ("cap=many", ["cap='many'", "an integer or none"]),
    ("instance.n_actions=two", ["instance.n_actions='two'", "expected an integer"]),
    ("sizes=0,4", ["invalid ToyConfig after sizes=0,4", "sizes=(0, 4) is not allowed"]),
    ("instance.kl_coef=-1", ["invalid InstanceConfig after instance.kl_coef=-1",
                             "kl_coef=-1.0 is not allowed: kl_coef must be a finite number in (0, inf]"]),
])
def test_override_errors_are_clear(override, words):
    with pytest.raises(ValueError) as err:
        apply_overrides(ToyConfig(), [override])
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_config_dict_roundtrip_and_hash():
    cfg = apply_overrides(ToyConfig(), ["sizes=2,3", "window=2,0.25", "instance.kl_coef=0.3", "cap=4"])
    plain = json.loads(json.dumps(config_to_dict(cfg)))  # as stored in manifest.json
    assert config_from_dict(ToyConfig, plain) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        config_from_dict(ToyConfig, {**plain, "bogus": 1})
    assert config_hash("toy", cfg, 4) == config_hash("toy", config_from_dict(ToyConfig, plain), 4)
    assert len({config_hash("toy", cfg, 4), config_hash("toy", cfg, 5),
                config_hash("toy", apply_overrides(cfg, ["instance.kl_coef=0.31"]), 4)}) == 3
    assert "instance.hidden" in settable_fields(cfg) and "instance" not in settable_fields(cfg)


# ---- keys and the runner ----

def test_seed_keys_do_not_depend_on_count_start_or_chunking():
    many = np.asarray(jax.random.key_data(seed_keys(7, 10)))
    assert np.array_equal(jax.random.key_data(seed_keys(7, 4)), many[:4])
    assert np.array_equal(jax.random.key_data(seed_keys(7, 3, start=5)), many[5:8])
    assert np.array_equal(many[3], jax.random.key_data(jax.random.fold_in(jax.random.key(7), 3)))
    assert len({tuple(k) for k in many}) == 10
    assert not np.array_equal(jax.random.key_data(seed_keys(8, 4)), many[:4])
    with jax.enable_x64(False):
        assert np.array_equal(jax.random.key_data(seed_keys(7, 10)), many)


def test_vmap_runner_equals_per_seed_loop_and_chunking_is_invisible():
    cfg = ToyConfig()
    sizes = np.asarray(cfg.sizes)
    keys = seed_keys(3, 5)
    fn = functools.partial(toy_one_seed, config=cfg)
    progress = Progress()
    whole = run_vectorized(fn, keys, sizes, progress=progress)
    chunked = run_vectorized(fn, keys, sizes, chunk_size=2, progress=progress)
    assert isinstance(whole["value"], np.ndarray) and whole["label_mean"].shape == (5, 2)
    one = jax.jit(fn)
    for i in range(5):
        ref = one(keys[i], sizes)
        for name in ref:
            np.testing.assert_allclose(whole[name][i], ref[name], rtol=1e-12, atol=1e-14)
    for name in whole:
        np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-12, atol=1e-14)
    assert [c["chunks"] for c in progress.calls] == [1, 3]
    assert [c["tag"] for c in progress.calls] == ["call0", "call1"]
    assert all(c["run_s"] > 0 for c in progress.calls)
    t = progress.timings()
    assert t["compile_s"] == pytest.approx(sum(c["compile_s"] for c in progress.calls))

    # the same partial with an equal config reuses the executable; a lambda always compiles
    again = run_vectorized(functools.partial(toy_one_seed, config=ToyConfig()), keys, sizes,
                           progress=progress)
    assert progress.calls[-1]["reused_executable"] and progress.calls[-1]["compile_s"] == 0.0
    np.testing.assert_array_equal(again["value"], whole["value"])
    run_vectorized(lambda k, s: toy_one_seed(k, s, cfg), keys, sizes, progress=progress)
    assert not progress.calls[-1]["reused_executable"] and progress.calls[-1]["compile_s"] > 0


def test_runner_rejects_key_outputs_and_empty_batches():
    with pytest.raises(TypeError, match="key_data"):
        run_vectorized(lambda k: k, seed_keys(0, 2))
    with pytest.raises(ValueError, match="at least one key"):
        run_vectorized(lambda k: 1.0, seed_keys(0, 0))


_TWO_DEVICES = textwrap.dedent("""
    import functools, json
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from experiments.engine import runner
    from experiments.engine.runner import Progress, run_vectorized, seed_keys
    from tests.test_engine import ToyConfig, toy_one_seed
    assert jax.device_count() == 2, jax.devices()
    shards = []
    real = runner._run_chunk
    def spy(compiled, keys, args):
        out = real(compiled, keys, args)
        shards.append([s.data.shape[0] for s in out["value"].addressable_shards])
        return out
    runner._run_chunk = spy
    cfg = ToyConfig()
    fn = functools.partial(toy_one_seed, config=cfg)
    keys, sizes = seed_keys(0, 5), np.asarray(cfg.sizes)
    p2, p1 = Progress(), Progress()
    two = run_vectorized(fn, keys, sizes, chunk_size=3, progress=p2)  # chunks of 4, the last padded
    one = run_vectorized(fn, keys, sizes, progress=p1, devices=jax.devices()[:1])
    assert (p2.calls[0]["devices"], p2.calls[0]["chunk_size"], p2.calls[0]["chunks"]) == (2, 4, 2)
    assert p1.calls[0]["devices"] == 1
    assert shards == [[2, 2], [2, 2], [5]], shards  # two chunks split over 2 devices, then 1 device
    for name in one:
        assert two[name].shape == one[name].shape, name
        np.testing.assert_allclose(two[name], one[name], rtol=1e-12, atol=1e-14)
    print(json.dumps({k: v.tolist() for k, v in two.items()}))
""")


def test_two_device_sharded_run_equals_one_device_run():
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    cfg = ToyConfig()
    here = run_vectorized(functools.partial(toy_one_seed, config=cfg), seed_keys(0, 5), np.asarray(cfg.sizes))
    for name, values in two.items():
        np.testing.assert_allclose(np.asarray(values), here[name], rtol=1e-12, atol=1e-14)


# ---- storage ----

def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "results.csv"
    storage.atomic_write_text(path, "old\n")

    def broken(f):
        f.write("half a fi")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        storage.atomic_write(path, broken)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]  # no temp file left


def test_csv_roundtrip_keeps_types_and_exact_floats(tmp_path):
    table = {"algorithm": np.array(["dpo", "rlhf, mle", 'q"uote']), "n": np.array([1, 2, 3]),
             "x": np.array([0.1, 1 / 3, np.nan]), "ok": np.array([True, False, True])}
    _, digest = storage.write_results(tmp_path, table)
    for manifest in (False, True):
        if manifest:
            storage.write_manifest(tmp_path, {"results": {"columns": storage.column_types(table),
                                                          "sha256": digest}})
        back = storage.read_results(tmp_path)
        assert list(back) == list(table)
        for k in table:
            assert back[k].dtype.kind == table[k].dtype.kind, k
            np.testing.assert_array_equal(back[k], table[k])
    (tmp_path / "results.csv").write_text("algorithm,n,x,ok\ndpo,1,0.5,True\n")
    with pytest.raises(ValueError, match="does not match"):
        storage.read_results(tmp_path)


def test_interrupted_run_leaves_no_results_or_keeps_the_previous_ones(tmp_path, toy):
    crashing = ToyExperiment(fail_after_run=True)
    registry.register("toy", crashing, replace=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli.run_experiment("toy", seeds=2, out=tmp_path)
    assert not (tmp_path / "toy" / "results.csv").exists()
    assert not (tmp_path / "toy" / "manifest.json").exists()

    registry.register("toy", toy, replace=True)
    run_dir = cli.run_experiment("toy", seeds=2, out=tmp_path)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    registry.register("toy", crashing, replace=True)
    with pytest.raises(RuntimeError):
        cli.run_experiment("toy", seeds=3, overrides=["shift=1"], out=tmp_path)
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after == before
    assert storage.read_results(run_dir)["seed"].max() == 1


def test_a_plotting_failure_keeps_the_results_and_plot_dir_retries(tmp_path, toy):
    toy.fail_plot = True
    with pytest.raises(RuntimeError, match="simulated plotting bug"):
        cli.run_experiment("toy", seeds=2, out=tmp_path)
    run_dir = tmp_path / "toy"
    manifest = storage.read_manifest(run_dir)
    assert manifest["plot_error"] == "RuntimeError: simulated plotting bug" and manifest["figures"] == []
    assert len(storage.read_results(run_dir)["seed"]) == 4
    toy.fail_plot = False
    assert [p.name for p in cli.replot(run_dir)] == ["toy.png", "toy.svg"]
    manifest = storage.read_manifest(run_dir)
    assert manifest["plot_error"] is None and manifest["figures"] == ["toy.png", "toy.svg"]


def test_resume_reuses_saved_chunks_and_gives_the_same_results(tmp_path, toy, monkeypatch):
    toy.chunk_size = 2
    reference = cli.run_experiment("toy", seeds=6, out=tmp_path / "ref")
    executed = []
    real_run_chunk, real_save = runner._run_chunk, storage.ChunkStore.save
    monkeypatch.setattr(runner, "_run_chunk", lambda *a: executed.append(1) or real_run_chunk(*a))

    def save_then_die(self, tag, index, start, stop, tree):
        real_save(self, tag, index, start, stop, tree)
        if index == 1:
            raise KeyboardInterrupt  # killed right after chunk 1 was saved

    monkeypatch.setattr(storage.ChunkStore, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        cli.run_experiment("toy", seeds=6, out=tmp_path)
    assert len(executed) == 2 and not (tmp_path / "toy" / "results.csv").exists()
    chunks = sorted(p.name for p in (tmp_path / "toy" / ".chunks").rglob("*.npz"))
    assert chunks == ["chunk_0.npz", "chunk_1.npz"]

    monkeypatch.setattr(storage.ChunkStore, "save", real_save)
    executed.clear()
    log = io.StringIO()
    run_dir = cli.run_experiment("toy", seeds=6, out=tmp_path, stream=log)
    assert len(executed) == 1  # only chunk 2 was computed
    assert "found 2 saved chunk(s)" in log.getvalue() and "reused 2 saved chunk(s)" in log.getvalue()
    manifest = storage.read_manifest(run_dir)
    assert manifest["resumed_chunks"] == 2
    assert not (run_dir / ".chunks").exists()
    got, want = storage.read_results(run_dir), storage.read_results(reference)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])

    # a different config hashes elsewhere: nothing is reused
    monkeypatch.setattr(storage.ChunkStore, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        cli.run_experiment("toy", seeds=6, out=tmp_path)
    monkeypatch.setattr(storage.ChunkStore, "save", real_save)
    executed.clear()
    run_dir = cli.run_experiment("toy", seeds=6, overrides=["shift=0.5", "method=shifted"], out=tmp_path)
    assert len(executed) == 3 and storage.read_manifest(run_dir)["resumed_chunks"] == 0
    assert (run_dir / ".chunks").exists()  # the other config's chunks stay for its own resumption


def test_manifest_records_the_run(tmp_path, toy):
    run_dir = cli.run_experiment("toy", preset="paper", seeds=3, overrides=["instance.kl_coef=0.5"],
                                 out=tmp_path, x64=False, command=["rlhf-bandits", "run", "toy"])
    m = storage.read_manifest(run_dir)
    assert m["experiment"] == "toy" and m["preset"] == "paper" and m["seeds"] == 3
    assert m["dtype"] == "float32" and m["x64"] is False
    assert m["config"]["instance"]["kl_coef"] == 0.5 and m["config"]["sizes"] == [4, 16, 64]
    assert m["overrides"] == ["instance.kl_coef=0.5"] and m["command"] == "rlhf-bandits run toy"
    assert m["devices"]["count"] == jax.device_count() and m["devices"]["kinds"]
    assert set(m["versions"]) >= {"python", "jax", "jaxlib", "numpy", "optax"}
    assert m["versions"]["jax"] == jax.__version__
    assert "git" in m and m["timings"]["compile_s"] > 0 and m["timings"]["run_s"] > 0
    assert m["results"]["rows"] == 9 and m["results"]["columns"]["n"] == "int"
    table = storage.read_results(run_dir)
    assert m["summary"]["mean_value"] == pytest.approx(table["value"].mean(), rel=1e-6)
    assert sorted(m["figures"]) == ["toy.png", "toy.svg"]
    assert storage.read_results(run_dir)["label_mean"].shape == (9,)
    assert jnp.zeros(()).dtype == jnp.float64  # --no-x64 did not leak out of the run


def test_git_revision_is_optional(tmp_path):
    assert storage.git_revision(tmp_path) is None
    rev = storage.git_revision(ROOT)
    assert rev is None or len(rev["revision"]) == 40


# ---- registry and plotting ----

def test_registry_lookup_and_protocol_checks(toy):
    assert "toy" in registry.names() and registry.get("toy") is toy
    assert registry.describe(toy) == "toy experiment for the engine tests"
    with pytest.raises(registry.UnknownNameError, match=r"unknown experiment 'nope'; available: .*toy"):
        registry.get("nope")
    with pytest.raises(registry.UnknownNameError, match="available: quick, paper"):
        registry.preset(toy, "toy", "huge")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("toy", toy)
    with pytest.raises(TypeError, match="lacks run"):
        registry.register("broken", type("X", (), {"presets": {"quick": ToyConfig()}, "plot": print}))
    with pytest.raises(TypeError, match="frozen"):
        mutable = dataclasses.make_dataclass("M", [("a", int, 1)])
        registry.register("broken", type("X", (), {"presets": {"quick": mutable()}, "run": print,
                                                   "plot": print}))
    assert registry.default_seeds(toy, "paper") == 6


def test_results_and_tidy_validate_shapes():
    t = tidy({"m": np.arange(6).reshape(2, 3)}, seed=[0, 1], n=[10, 20, 30])
    assert list(t["seed"]) == [0, 0, 0, 1, 1, 1] and list(t["n"]) == [10, 20, 30] * 2
    assert list(t["m"]) == list(range(6))
    with pytest.raises(ValueError, match=r"metric 'm' has shape \(3, 2\), expected \(2, 3\)"):
        tidy({"m": np.zeros((3, 2))}, seed=[0, 1], n=[10, 20, 30])
    with pytest.raises(ValueError, match="equal lengths"):
        Results({"a": np.zeros(2), "b": np.zeros(3)})
    with pytest.raises(ValueError, match="1-D"):
        Results({"a": np.zeros((2, 2))})
    assert as_results({"a": [1, 2]}).n_rows == 2


def test_confidence_band_and_slope():
    from scipy import stats as scipy_stats
    rng = np.random.default_rng(0)
    x = np.array([10.0, 100.0, 1000.0, 10000.0])
    y = 3.0 * x ** -0.5 * np.exp(0.1 * rng.standard_normal((40, 4)))
    mean, low, high = stats.mean_ci(y)
    half = scipy_stats.t.ppf(0.975, 39) * y.std(0, ddof=1) / np.sqrt(40)
    np.testing.assert_allclose(high - mean, half)
    np.testing.assert_allclose(mean - low, half)
    fit = stats.fit_loglog_slope(x, y)
    assert fit.low < -0.5 < fit.high and fit.high - fit.low < 0.1
    assert fit.slope == pytest.approx(np.polyfit(np.log(x), np.log(y.mean(0)), 1)[0])
    assert stats.fit_loglog_slope(x, y) == fit  # fixed bootstrap seed
    exact = stats.fit_loglog_slope(x, np.tile(2 * x ** -1.0, (5, 1)))
    assert exact.slope == pytest.approx(-1.0) and exact.high - exact.low < 1e-9
    with pytest.raises(ValueError, match="positive"):
        stats.fit_loglog_slope(x, -y)


def test_loglog_slope_interval_skips_resamples_without_a_slope():
    """Seeds whose value is exactly 0 at the largest size (nash-offline at kl_coef = 1e-6, issue 14): resamples
    without a positive mean there have no slope; the interval is over the others (NumPy, same bootstrap draws),
    NaN with a reason when fewer than 95% have one."""
    rng = np.random.default_rng(1)
    x = np.array([10.0, 100.0, 1000.0])
    y = 3.0 * x ** -1.0 * np.exp(0.1 * rng.standard_normal((40, 3)))
    y[3:, -1] = 0.0                                   # 3 positive seeds at x = 1000
    fit = stats.fit_loglog_slope(x, y)
    means = y[np.random.default_rng(0).integers(0, 40, size=(2000, 40))].mean(axis=1)
    ok = np.all(means > 0, axis=1)
    assert 0.95 <= ok.mean() < 1.0
    lx = np.log(x) - np.log(x).mean()
    ly = np.log(means[ok])
    boot = (ly - ly.mean(axis=1, keepdims=True)) @ lx / (lx @ lx)
    np.testing.assert_allclose([fit.low, fit.high], np.quantile(boot, [0.025, 0.975]), rtol=1e-12)
    assert fit.slope == pytest.approx(np.polyfit(np.log(x), np.log(y.mean(0)), 1)[0])
    y[1:, -1] = 0.0                                   # one positive seed: most resamples have none
    summary = stats.slope_summary("a", x, y)
    assert np.isfinite(summary["a/slope"]) and np.isnan(summary["a/slope_low"]) and np.isnan(summary["a/slope_high"])
    assert "bootstrap resamples" in summary["a/slope_missing"]


def test_band_range_is_min_to_max_over_seeds():
    y = np.array([[1.0, 10.0, 1e-3], [2.0, 30.0, 1e-1], [6.0, 20.0, 1e-2]])
    fig, ax = plotting.figure()
    plotting.band_plot(ax, [1, 2, 4], y, label="range", band="range")
    vertices = ax.collections[0].get_paths()[0].vertices
    np.testing.assert_allclose(np.sort(np.unique(vertices[:, 1])), np.sort(np.concatenate([y.min(0), y.max(0)])))
    with pytest.raises(ValueError, match="band='iqr' is not allowed"):
        plotting.band_plot(ax, [1, 2, 4], y, label="bad", band="iqr")


def test_save_figure_requires_titles_and_writes_png_and_svg(tmp_path):
    fig, ax = plotting.figure()
    plotting.band_plot(ax, [1, 2, 4], np.ones((3, 3)), label="flat", slope=True)
    with pytest.raises(ValueError, match="no title, x label, y label"):
        plotting.save_figure(fig, tmp_path, "bad")
    fig, ax = plotting.figure()
    line = plotting.band_plot(ax, [1, 2, 4], np.ones((3, 3)), label="flat", slope=True, loglog=True)
    bound = plotting.bound_plot(ax, [1, 2, 4], [2, 2, 2], label="bound")
    ax.set(title="t", xlabel="n", ylabel="y")
    assert "slope 0.00 [0.00, 0.00]" in line.get_label() and bound.get_linestyle() == "--"
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    paths = plotting.save_figure(fig, tmp_path, "good")
    assert [p.name for p in paths] == ["good.png", "good.svg"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and b"<svg" in paths[1].read_bytes()[:400]
    assert not list(tmp_path.glob("bad.*"))


def test_fit_suptitle_wraps_a_title_wider_than_the_figure_and_keeps_a_short_one():
    words = " ".join(f"field_{i}={i / 7:.4f}," for i in range(30))
    fig, ax = plotting.figure(ncols=2, size=(3.0, 3.0))
    fig.suptitle(words)
    plotting.fit_suptitle(fig)
    title = fig.get_suptitle()
    assert title.count("\n") >= 1 and " ".join(title.split()) == words
    assert fig._suptitle.get_window_extent(fig.canvas.get_renderer()).width <= fig.bbox.width
    fig.suptitle("short title")
    plotting.fit_suptitle(fig)
    assert fig.get_suptitle() == "short title"
    plotting.plt.close(fig)


# ---- progress: a bar on a terminal, lines with elapsed time and ETA in a log, nothing with quiet ----

def _uniform_plus(key, x):
    return jax.random.uniform(key) + x


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_bar_on_a_terminal_lines_in_a_log_and_silent_when_quiet():
    fn, keys = functools.partial(_uniform_plus), seed_keys(0, 5)
    tty = _Terminal()
    first = run_vectorized(fn, keys, 1.0, progress=Progress("t", tty, chunk_size=2))
    text = tty.getvalue()
    assert "[t] call0: compiling the per-seed program for 2 seeds on 1 device(s)" in text   # announced first
    assert text.index("compiling") < text.index("compiled for 2 seeds")
    assert "\r" in text and "[t] call0: 100%" in text and "5/5 seeds [" in text and " elapsed, ETA " in text
    assert "chunk 1/3" not in text                          # the bar replaces the per-chunk lines

    log = io.StringIO()
    again = run_vectorized(fn, keys, 1.0, progress=Progress("t", log, chunk_size=2))
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and not any("%|" in l for l in lines)
    assert lines[0].startswith("[t] call0: chunk 1/3 (seeds 0-1 of 5) done in ") and ", ETA " in lines[0]
    assert lines[-1].startswith("[t] call0: chunk 3/3 (seeds 4-4 of 5) done in ") and "elapsed)" in lines[-1]
    np.testing.assert_array_equal(first, again)

    quiet = io.StringIO()
    progress = Progress("t", quiet, chunk_size=2, quiet=True)
    run_vectorized(fn, keys, 1.0, progress=progress)
    progress.message("a phase")
    assert quiet.getvalue() == ""
    progress.warn("WARNING: something")
    assert quiet.getvalue() == "[t] WARNING: something\n"


def test_durations_read_at_a_glance():
    from experiments.engine.progress import clock
    assert [clock(s) for s in (3.14, 42.4, 185, 7625)] == ["3.1 s", "42 s", "3 min 05 s", "2 h 07 min"]
