"""The online DPO loop through a Hugging Face policy (``algorithms/lm/hf_loop.py``), ``hf-smoke`` and
``lm-iterative-dpo --set policy.backend=hf`` (docs/llm_bridge.md §1.4, §5.1, §5.4).

Most checks use a tiny random Llama built from a config and saved next to a ``tokenizers``-built WordLevel
tokenizer (float64, nothing downloaded); one runs ``hf-smoke`` through the registry on the real SmolLM2 GGUF.
References are independent of the code under test: MiniLM embeddings by a plain unbatched forward with
hand-written mean pooling, per-token log-probs by a token-by-token loop over unpadded prefixes.
"""
import json
import math
import os

# Before torch loads its OpenMP runtime: idle OpenMP threads sleep instead of spinning (shared 2-core machine).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModel, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from scipy import stats

from algorithms.lm import hf_loop as ol
from bandits.lm.hf_features import SMOLLM2_SHA256
from experiments.catalogue import hf_smoke
from experiments.engine import registry
from experiments.engine.cli import run_experiment
from experiments.engine.config import apply_overrides, replace

torch.set_num_threads(2)

TOKENS = ["<pad>", "<bos>", "<eos>", "good", "bad", "cat", "dog", "hello", "thanks"]
PAD, BOS, EOS = 0, 1, 2
L = 4


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_llama")
    tk = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(TOKENS)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(TOKENS), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64, initializer_range=0.5, bos_token_id=BOS,
                                         eos_token_id=EOS, pad_token_id=PAD))
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def tiny_config(tiny_path):
    return ol.HFPolicyConfig(path=tiny_path, dtype="float64", max_new_tokens=L, banned_token_ids=(PAD, BOS))


@pytest.fixture(scope="module")
def reward():
    return ol.PlantedReward(ol.load_featurizer(), ol.RewardConfig(target="good cat", relevance=0.3, scale=10.0))


def tiny_overrides(path):
    return [f"policy.path={path}", "policy.dtype=float64", f"policy.max_new_tokens={L}",
            f"policy.banned_token_ids={PAD},{BOS}"]


# -- the planted reward -----------------------------------------------------------------------------------------
def _embed_one(model, tokenizer, text):
    """e(text): one unpadded forward, mean over tokens, L2 normalisation (written here, not the featurizer's)."""
    with torch.no_grad():
        batch = tokenizer(text, return_tensors="pt", truncation=True, max_length=256)
        hidden = model(**batch).last_hidden_state[0].double().numpy()
    mean = hidden.mean(0)
    return mean / np.linalg.norm(mean)


def test_planted_reward_is_theta_star_dot_minilm_features(reward):
    """r*(x, y) = <theta*, [e(y), e(y) e(x)] / sqrt 2> = scale ((1 - rho) cos(y, target) + rho cos(y, x)),
    with e recomputed independently, one text at a time."""
    directory = ol.load_featurizer().model_dir
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    model = AutoModel.from_pretrained(str(directory), dtype=torch.float32, local_files_only=True).eval()
    prompts = ["Describe a cat in one sentence.", "Why is the sky blue?", "Say something nice."]
    responses = ["good cat", "The sky is blue because air scatters blue light more than red.", "thanks hello"]
    got = reward(prompts, responses)
    e = {t: _embed_one(model, tokenizer, t) for t in prompts + responses + ["good cat"]}
    phi = np.stack([np.concatenate([e[y], e[y] * e[x]]) / math.sqrt(2) for x, y in zip(prompts, responses)])
    np.testing.assert_allclose(got, phi @ reward.theta_star, atol=1e-5)
    rho, scale = 0.3, 10.0
    closed = [scale * ((1 - rho) * e[y] @ e["good cat"] + rho * e[y] @ e[x]) for x, y in zip(prompts, responses)]
    np.testing.assert_allclose(got, closed, atol=1e-5)
    print(f"planted reward {np.round(got, 4)}; |r*| <= scale")
    assert got[0] > got[2] and np.all(np.abs(got) <= scale + 1e-9)


# -- the loop on a tiny Llama ----------------------------------------------------------------------------------
def _loop_token_logprobs(model, prompt, response):
    """Per-token log-probs by one unpadded forward per token (banned ids masked, as the support mask does)."""
    out = []
    with torch.no_grad():
        for t in range(len(response)):
            ids = torch.tensor([list(prompt) + list(response[:t])])
            logits = model(input_ids=ids).logits[0, -1].double()
            logits[[PAD, BOS]] = -torch.inf
            out.append(torch.log_softmax(logits, -1)[response[t]].item())
    return np.asarray(out)


def test_pairs_dpo_steps_and_kl_estimates_on_a_tiny_llama(tiny_config, reward):
    """max_min with majority labels picks the best and worst draw of each group; the DPO loss on the fixed
    batch starts at log 2 (pi = pi0) and decreases at every step; the sampled k1/k3 KL estimates equal the
    estimator formulas applied to token-by-token log-probs."""
    reference = ol.load_reference(tiny_config)
    policy = ol.trainable_copy(reference)
    assert all(not p.requires_grad for p in reference.model.parameters())
    prompts = ["good dog", "hello cat thanks"]
    prompt_ids = policy.encode_prompts(prompts)
    options = replace(ol.OnlineOptions(), k=4, n_groups=3, n_steps=5, learning_rate=3e-3, kl_coef=0.5,
                      deterministic_labels=True)
    batch = ol.collect_pairs(jax.random.key(1), policy, reward, prompts, prompt_ids, options)
    groups = batch["group_reward"].reshape(-1, options.loop.k)
    np.testing.assert_array_equal(batch["chosen_reward"], groups.max(1))
    np.testing.assert_array_equal(batch["rejected_reward"], groups.min(1))
    pair_prompts = [prompts[0]] * 3 + [prompts[1]] * 3
    # MiniLM runs in float32 on padded batches: a batch of other texts pads differently, so the recomputed
    # reward agrees to float32 rounding (seen: 1.6e-7 relative with transformers 5.24), not bit for bit.
    np.testing.assert_allclose(reward(pair_prompts, batch["chosen_text"]), batch["chosen_reward"], rtol=2e-6)

    before = {k: v.detach().clone() for k, v in reference.model.state_dict().items()}
    losses = ol.dpo_steps(policy, reference, batch["inputs"], options)
    print(f"DPO loss over {options.loop.n_steps} steps: {np.round(losses, 5)}")
    assert abs(losses[0] - math.log(2)) < 1e-12
    assert np.all(np.diff(losses) < 0)
    for k, v in reference.model.state_dict().items():        # the frozen pi0 did not move
        assert torch.equal(v, before[k])

    draws = policy.sample(jax.random.key(2), prompt_ids, 3)
    est = ol.kl_estimates(policy, reference, prompt_ids, draws)
    for row in range(len(draws.tokens)):
        prompt = prompt_ids[draws.prompt_index[row]]
        response = draws.tokens[row][draws.mask[row]].tolist()
        d = (_loop_token_logprobs(policy.model, prompt, response)
             - _loop_token_logprobs(reference.model, prompt, response))
        np.testing.assert_allclose(est["k1"][row], d.sum(), atol=1e-9)
        np.testing.assert_allclose(est["k3"][row], np.sum(np.exp(-d) - 1 + d), atol=1e-9)
    assert np.all(est["k3"] >= 0) and est["k3"].max() > 0


def test_online_dpo_records_every_iteration(tiny_config, reward):
    """Two iterations: rows 0..T, KL exactly 0 at t = 0, loss log 2 before the first step, the recorded
    example rewards equal the planted reward of their text, the run is reproducible from the key; hf-smoke's
    intervals of the per-draw values are Student-t intervals."""
    reference = ol.load_reference(tiny_config)
    prompts = ["good dog", "hello cat"]
    options = replace(ol.OnlineOptions(), n_iterations=2, k=3, n_groups=2, n_steps=2, learning_rate=1e-2, kl_coef=0.5,
                      n_eval=4)
    runs = [ol.online_dpo(jax.random.key(5), ol.trainable_copy(reference), reference, reward, prompts, options)
            for _ in range(2)]
    res = runs[0]
    assert res.reward_mean.shape == (3,) and res.step_losses.shape == (2, 3)
    assert res.kl_k3[0] == 0 and res.kl_k1[0] == 0
    assert abs(res.dpo_loss_before[1] - math.log(2)) < 1e-12
    assert np.isnan(res.dpo_loss_before[0]) and np.isfinite(res.dpo_loss_after[1:]).all()
    np.testing.assert_allclose(res.reward_mean, res.eval_reward.mean(1), atol=1e-12)
    np.testing.assert_allclose(res.kl_k3, res.eval_k3.mean(1), atol=1e-12)
    assert res.eval_reward.shape == res.eval_k3.shape == (3, 2 * options.n_eval)
    table = hf_smoke.result_table(res, options.kl_coef, 0)
    half = stats.t.ppf(0.975, 2 * options.n_eval - 1) * res.eval_reward.std(1, ddof=1) / np.sqrt(2 * options.n_eval)
    np.testing.assert_allclose(table["reward_lo"], res.reward_mean - half, rtol=1e-12)
    np.testing.assert_allclose(table["reward_hi"], res.reward_mean + half, rtol=1e-12)
    assert np.all(table["kl_k3_lo"] <= res.kl_k3) and np.all(res.kl_k3 <= table["kl_k3_hi"])
    np.testing.assert_allclose(table["J_est"], res.reward_mean - 0.5 * res.kl_k3, rtol=1e-12)
    ex = res.examples
    assert len(ex) == 3 * 2 * options.n_examples
    np.testing.assert_allclose(reward([e["prompt"] for e in ex], [e["response"] for e in ex]),
                               [e["reward"] for e in ex], rtol=2e-6)     # float32 MiniLM, other padding
    np.testing.assert_array_equal(runs[1].eval_reward, res.eval_reward)      # CPU: bitwise reproducible
    assert runs[1].seeds == res.seeds


# -- experiments ------------------------------------------------------------------------------------------------
HF_SMOKE_COLUMNS = ["seed", "iteration", "reward_mean", "reward_lo", "reward_hi", "kl_k3", "kl_k3_lo", "kl_k3_hi",
                    "kl_k1", "J_est", "chosen_reward", "rejected_reward", "dpo_loss_before", "dpo_loss_after",
                    "eos_rate", "mean_length", "seconds"]


def test_hf_smoke_runs_on_smollm2_through_the_registry(tmp_path):
    """The real thing at a minimal size: SmolLM2 (GGUF), 1 prompt, K=2, 1 iteration, 5 tokens, 1 DPO step."""
    out = run_experiment("hf-smoke", "quick", overrides=["n_prompts=1", "k=2", "n_iterations=1", "n_steps=1",
                                                         "n_eval=2", "policy.max_new_tokens=5"], out=tmp_path)
    header = (out / "results.csv").read_text().splitlines()
    assert header[0].split(",") == HF_SMOKE_COLUMNS and len(header) == 3
    from experiments.engine import storage
    table = storage.read_results(out)
    print({c: np.round(table[c], 4).tolist() for c in ("reward_mean", "kl_k3", "dpo_loss_before",
                                                       "dpo_loss_after", "seconds")})
    assert table["kl_k3"][0] == 0 and table["kl_k3"][1] >= 0
    assert abs(table["dpo_loss_before"][1] - math.log(2)) < 1e-5
    assert table["dpo_loss_after"][1] < table["dpo_loss_before"][1]
    assert np.isfinite(table["reward_mean"]).all() and np.isfinite(table["seconds"]).all()
    manifest = json.loads((out / "manifest.json").read_text())
    summary = manifest["summary"]
    assert summary["policy/gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and summary["chat_template"]
    assert any(k.startswith("example/t0/") for k in summary) and any(k.startswith("example/t1/") for k in summary)
    assert json.loads(summary["policy/generation_config"])["top_k"] == 0
    assert json.loads(summary["policy/sha256"]) == {"SmolLM2-135M-Instruct.Q4_1.gguf": SMOLLM2_SHA256}
    assert (out / "hf_smoke.png").exists()


def test_lm_iterative_dpo_with_the_hf_backend(tiny_path, tmp_path):
    """backend=hf: the same variants and columns, sampled; the pi*-columns are NaN, J = E r* - eta KL."""
    out = run_experiment("lm-iterative-dpo", "quick-hf", seeds=1, out=tmp_path, overrides=tiny_overrides(tiny_path) + [
        "n_prompts=2", "n_iterations=1", "k=2", "n_steps=2", "policy.n_eval=3", "kl_coef=0.5",
        "learning_rate=1e-2", "variants=max_min_warm,random_pairs_warm"])
    from experiments.engine import storage
    table = storage.read_results(out)
    assert list(np.unique(table["algorithm"])) == ["max_min_warm", "random_pairs_warm"]
    assert len(table["J"]) == 2 * 2
    for c in ("subopt_kl", "J_star", "reward_star", "kl_star_to_ref"):
        assert np.isnan(table[c]).all()
    for c in ("J", "reward_mean", "kl_to_ref", "kl_k1", "reward_lo", "reward_hi"):
        assert np.isfinite(table[c]).all()
    np.testing.assert_allclose(table["J"], table["reward_mean"] - 0.5 * table["kl_to_ref"], atol=1e-12)
    at0 = table["iteration"] == 0
    assert (table["kl_to_ref"][at0] == 0).all()
    np.testing.assert_array_equal(table["reward_mean"][at0][0], table["reward_mean"][at0][1])  # same pi0, key
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["backend"] == "hf" and "max_min_warm/reward_gain" in summary
    assert set(json.loads(summary["policy/sha256"])) == {"config.json", "model.safetensors"}
    assert (out / "lm_iterative_dpo.png").exists()


def test_bad_backend_and_hf_options_give_clear_errors(tmp_path):
    experiment = registry.get("lm-iterative-dpo")
    with pytest.raises(ValueError, match=r"policy\.backend='vllm' is not allowed: policy\.backend must be one of "
                                         r"'jax', 'hf'"):
        apply_overrides(experiment.presets["quick"], ["policy.backend=vllm"])
    with pytest.raises(registry.UsageError, match=r"policy\.backend='torch' is not allowed"):
        run_experiment("lm-iterative-dpo", "quick", overrides=["policy.backend=torch"], out=tmp_path)
    with pytest.raises(ValueError, match=r"history=True is not allowed: history must be False with "
                                         r"policy\.backend='hf'"):
        apply_overrides(experiment.presets["quick-hf"], ["history=true"])
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(ValueError, match=r"policy\.path=.*no_such_model.* is not allowed: policy\.path must be"):
        apply_overrides(registry.get("hf-smoke").presets["quick"], [f"policy.path={missing}"])
    with pytest.raises(ValueError, match=r"policy\.dtype='float8' is not allowed"):
        apply_overrides(registry.get("hf-smoke").presets["quick"], ["policy.dtype=float8"])
    # hf-smoke nests the loop's options (algorithms.lm.hf_loop.OnlineOptions); flat names still set them.
    smoke = apply_overrides(registry.get("hf-smoke").presets["quick"], ["kl_coef=0.3", "k=3", "n_eval=4"])
    assert (smoke.options.kl_coef, smoke.options.loop.k, smoke.options.n_eval) == (0.3, 3, 4)
    with pytest.raises(ValueError, match=r"history=True is not allowed: history must be False \(the Hugging Face"):
        apply_overrides(registry.get("hf-smoke").presets["quick"], ["history=true"])
    with pytest.raises(ValueError, match=r"unknown field 'beta' for Config"):        # renamed: kl_coef
        apply_overrides(registry.get("hf-smoke").presets["quick"], ["beta=0.3"])
    # backend=jax ignores the checkpoint fields (no path needed), and its presets still validate.
    assert apply_overrides(experiment.presets["quick"], ["policy.backend=jax"]).policy.backend == "jax"
