"""The Hugging Face adapter on tiny random GPT-2 and Llama checkpoints (docs/llm_bridge.md §5.4 tests 9-15).

The checkpoints are built from a config, saved with ``save_pretrained`` next to a ``tokenizers``-built
WordLevel tokenizer and loaded back through ``HFPolicy`` in float64: nothing is downloaded. Vocabulary
``<pad> <bos> <eos> a b c``; the response space bans ``<pad>`` and ``<bos>`` (the shared support mask).
GPT-2 uses pad == eos (as the real GPT-2 does); Llama has a separate pad token. Every reference value is
computed independently of the adapter: ``generate`` + ``compute_transition_scores``, a token-by-token loop
over unpadded prefixes, brute-force enumeration of the response space, torch-written losses.
"""
import copy
import itertools
import json
import os
import shutil
import subprocess
import sys

# Before torch loads its OpenMP runtime: idle OpenMP threads sleep instead of spinning. On a shared 2-core
# machine spinning threads made torch 5-15x slower (a forward of SmolLM2 on 8x45 tokens: 21 s vs 4 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from scipy import stats
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (AutoModelForCausalLM, GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, PreTrainedTokenizerFast)

from algorithms.lm import train as lm_train
from algorithms.lm.hf_policy import HFPolicy

torch.set_num_threads(2)

TOKENS = ["<pad>", "<bos>", "<eos>", "a", "b", "c"]
PAD, BOS, EOS = 0, 1, 2
BANNED = (PAD, BOS)
WORDS = (3, 4, 5)
L = 3
PROMPTS = [[BOS, 3], [BOS, 5, 4, 3, 3]]          # different lengths: every batch is left-padded
MODELS = ("gpt2", "llama")


def _tokenizer(pad_token):
    tk = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(TOKENS)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=pad_token, bos_token="<bos>", eos_token="<eos>")


def _build(name, directory):
    torch.manual_seed(0)
    if name == "gpt2":   # dropout 0.1 everywhere by default; pad == eos
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(TOKENS), n_positions=32, n_embd=16, n_layer=2, n_head=2,
                                           initializer_range=0.3, bos_token_id=BOS, eos_token_id=EOS,
                                           pad_token_id=EOS))
        tok = _tokenizer("<eos>")
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(TOKENS), hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=32, initializer_range=0.3,
                                             attention_dropout=0.1, bos_token_id=BOS, eos_token_id=EOS,
                                             pad_token_id=PAD))
        tok = _tokenizer("<pad>")
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_hf")
    return {name: _build(name, root / name) for name in MODELS}


@pytest.fixture(scope="module")
def policies(checkpoints):
    """``(model, space) -> HFPolicy``: the EOS space (40 responses) and the fixed-length space (27)."""
    out = {}
    for name, path in checkpoints.items():
        out[name, "eos"] = HFPolicy(path, dtype="float64", max_new_tokens=L, eos_token_id=EOS,
                                    banned_token_ids=BANNED)
        out[name, "fixed"] = HFPolicy(path, dtype="float64", max_new_tokens=L, eos_token_id=None,
                                      banned_token_ids=BANNED + (EOS,))
    return out


def enumerate_space(space):
    """All responses as (tokens [A, L], mask [A, L]), by brute force."""
    rows = []
    if space == "fixed":
        rows = [list(seq) for seq in itertools.product(WORDS, repeat=L)]
    else:
        for length in range(1, L + 1):
            rows += [list(seq) + [EOS] for seq in itertools.product(WORDS, repeat=length - 1)]
        rows += [list(seq) for seq in itertools.product(WORDS, repeat=L)]
    tokens = np.full((len(rows), L), PAD, np.int32)
    mask = np.zeros((len(rows), L), bool)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = r
        mask[i, :len(r)] = True
    return tokens, mask


def loop_logprob(model, prompt, response, banned=BANNED):
    """``sum_t log pi(y_t | x, y_<t)`` by one unpadded forward per token (the independent reference)."""
    total = 0.0
    with torch.no_grad():
        for t in range(len(response)):
            ids = torch.tensor([list(prompt) + list(response[:t])])
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].double()
            logits[list(banned)] = -torch.inf
            total += torch.log_softmax(logits, -1)[response[t]].item()
    return total


def pooled_chi2(counts, probs, min_expected=5.0):
    """Pearson chi^2 of counts against probabilities, cells with expected count < 5 merged into one."""
    n = counts.sum()
    expected = n * probs
    small = expected < min_expected
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    chi2 = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    return chi2, int(keep.sum()) - 1


def law_pvalue(tokens, mask, prompt_index, enum_tokens, enum_mask, logp):
    """Pooled chi^2 p-value of samples against ``exp(logp)`` [n_prompts, A], summed over prompts."""
    keys = {(tuple(t[m]),): i for i, (t, m) in enumerate(zip(enum_tokens, enum_mask))}
    chi2, df = 0.0, 0
    for p in range(logp.shape[0]):
        rows = np.flatnonzero(prompt_index == p)
        idx = np.array([keys[(tuple(tokens[r][mask[r]]),)] for r in rows])
        c, d = pooled_chi2(np.bincount(idx, minlength=logp.shape[1]).astype(float), np.exp(logp[p]))
        chi2, df = chi2 + c, df + d
    return float(stats.chi2.sf(chi2, df))


def enumerated_logp(policy, space):
    tokens, mask = enumerate_space(space)
    A = len(tokens)
    reps = np.repeat(np.arange(len(PROMPTS)), A)
    lp = policy.logprob([PROMPTS[i] for i in reps], (np.tile(tokens, (len(PROMPTS), 1)),
                                                      np.tile(mask, (len(PROMPTS), 1))))
    return tokens, mask, np.asarray(lp).reshape(len(PROMPTS), A)


# -- test 9 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_logprob_matches_generate_scores_and_token_loop(policies, name):
    """docs/llm_bridge.md §5.4 test 9: adapter log-probs == compute_transition_scores (<= 1e-5) == a token loop."""
    policy = policies[name, "eos"]
    model = policy.model
    gen_diff = []
    for i, prompt in enumerate(PROMPTS):
        config = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=L,
                                  bad_words_ids=[[b] for b in BANNED], eos_token_id=EOS, pad_token_id=policy.pad_id,
                                  num_return_sequences=16, output_scores=True, return_dict_in_generate=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(11 + i)
            out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                                 generation_config=config)
        scores = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).double().numpy()
        generated = out.sequences[:, len(prompt):].numpy()
        tokens = np.full((len(generated), L), policy.pad_id)
        tokens[:, :generated.shape[1]] = generated
        is_eos = tokens == EOS
        lengths = np.where(is_eos.any(1), is_eos.argmax(1) + 1, L)
        mask = np.arange(L)[None] < lengths[:, None]
        reference = np.where(mask[:, :scores.shape[1]], scores, 0.0).sum(1)
        gen_diff.append(np.abs(np.asarray(policy.logprob([prompt], (tokens, mask))) - reference).max())
    assert max(gen_diff) <= 1e-5, gen_diff

    # A mixed left-padded batch of enumerated responses against one unpadded forward per token.
    enum_tokens, enum_mask = enumerate_space("eos")
    pick = np.random.default_rng(0).choice(len(enum_tokens), 10, replace=False)
    batch_prompts = [PROMPTS[j % 2] for j in range(len(pick))]
    adapter = np.asarray(policy.logprob(batch_prompts, (enum_tokens[pick], enum_mask[pick])))
    loop = np.array([loop_logprob(model, p, enum_tokens[k][enum_mask[k]]) for p, k in zip(batch_prompts, pick)])
    print(f"{name}: |adapter - generate scores| max {max(gen_diff):.2e}; "
          f"|adapter - token loop| max {np.abs(adapter - loop).max():.2e}")
    np.testing.assert_allclose(adapter, loop, rtol=0, atol=1e-10)


# -- test 10 --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_enumerated_logprobs_sum_to_one(policies, checkpoints, name):
    """Test 10: sum_y pi(y|x) = 1 over the space ``sample`` draws from; without the support mask it is not."""
    for space, size in (("eos", 40), ("fixed", 27)):
        tokens, _, logp = enumerated_logp(policies[name, space], space)
        assert len(tokens) == size
        total = jax.scipy.special.logsumexp(jnp.asarray(logp), axis=1)
        np.testing.assert_allclose(np.asarray(total), 0.0, atol=1e-12)
    unmasked = HFPolicy(checkpoints[name], dtype="float64", max_new_tokens=L, eos_token_id=EOS)
    _, _, logp = enumerated_logp(unmasked, "eos")
    total = np.asarray(jax.scipy.special.logsumexp(jnp.asarray(logp), axis=1))
    print(f"{name}: logsumexp without the support mask {total}")
    assert (total < -1e-3).all()


# -- test 11 --------------------------------------------------------------------------------------------------
N_DRAWS = 3000


@pytest.mark.parametrize("name", MODELS)
def test_samples_follow_exp_logprob(policies, name):
    """Test 11: pooled chi^2 of ``sample`` against exp(logprob), both spaces, two fixed seeds."""
    pvalues = []
    for space in ("eos", "fixed"):
        policy = policies[name, space]
        enum_tokens, enum_mask, logp = enumerated_logp(policy, space)
        for seed in (0, 1):
            r = policy.sample(jax.random.key(seed), PROMPTS, N_DRAWS)
            assert r.tokens.shape == (2 * N_DRAWS, L) and r.tokens.dtype == np.int32
            pvalues.append(law_pvalue(r.tokens, r.mask, r.prompt_index, enum_tokens, enum_mask, logp))
    print(f"{name}: chi^2 p-values (eos s0, s1, fixed s0, s1) {np.round(pvalues, 3)}")
    assert min(pvalues) > 1e-3


def _raw_samples(model, prompt, config=None):
    """``N_DRAWS`` responses from plain ``model.generate`` (tokens, mask), outside the adapter.

    ``config=None`` uses the checkpoint's generation config; otherwise ``config`` plus the support mask.
    """
    extra = dict(num_return_sequences=N_DRAWS, bad_words_ids=[[b] for b in BANNED], pad_token_id=PAD,
                 max_new_tokens=L)
    if config is not None:
        config = copy.deepcopy(config)
        config.update(**extra)
    kwargs = extra if config is None else {"generation_config": config}
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)), **kwargs)
    generated = out[:, len(prompt):].numpy()
    tokens = np.full((N_DRAWS, L), PAD)
    tokens[:, :generated.shape[1]] = generated
    is_eos = tokens == EOS
    lengths = np.where(is_eos.any(1), is_eos.argmax(1) + 1, L)
    return tokens, np.arange(L)[None] < lengths[:, None]


def test_checkpoint_generation_config_is_ignored(checkpoints, tmp_path):
    """Test 11, negative control: a generation_config.json with Llama-3's T=0.6, top_p=0.9, plus
    repetition_penalty=1.3 and min_new_tokens=2.

    The adapter still samples from exp(logprob). Plain ``generate`` samples from another law (p < 1e-6: the
    chi^2 test has power), with the checkpoint's defaults *and* with a fresh
    ``GenerationConfig(do_sample=True, temperature=1, top_k=0, top_p=1)``: transformers 5 fills every field
    left unset in a passed config from the checkpoint's file, so repetition_penalty and min_new_tokens leak in.
    """
    directory = tmp_path / "llama_t06"
    shutil.copytree(checkpoints["llama"], directory)
    (directory / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.3, "min_new_tokens": 2,
         "bos_token_id": BOS, "eos_token_id": EOS}))
    policy = HFPolicy(directory, dtype="float64", max_new_tokens=L, eos_token_id=EOS, banned_token_ids=BANNED)
    record = policy.manifest()
    assert record["checkpoint_generation_config"]["temperature"] == 0.6
    assert {k: record["generation_config"][k] for k in ("do_sample", "temperature", "top_k", "top_p",
                                                        "repetition_penalty")} == \
        {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0}
    enum_tokens, enum_mask, logp = enumerated_logp(policy, "eos")
    r = policy.sample(jax.random.key(3), PROMPTS, N_DRAWS)
    p_adapter = law_pvalue(r.tokens, r.mask, r.prompt_index, enum_tokens, enum_mask, logp)

    raw = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float64).eval()
    assert raw.generation_config.temperature == 0.6
    first = np.zeros(N_DRAWS, int)
    p_raw = law_pvalue(*_raw_samples(raw, PROMPTS[0]), first, enum_tokens, enum_mask, logp[:1])
    fresh = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    p_fresh = law_pvalue(*_raw_samples(raw, PROMPTS[0], fresh), first, enum_tokens, enum_mask, logp[:1])
    print(f"chi^2 p: adapter {p_adapter:.3f}; plain generate with the checkpoint config {p_raw:.1e}, "
          f"with a fresh T=1/top_k=0/top_p=1 config {p_fresh:.1e}")
    assert p_adapter > 1e-3
    assert p_raw < 1e-6 and p_fresh < 1e-6


# -- test 12 --------------------------------------------------------------------------------------------------
def _unpositioned_logprob(model, prompt, response, pad_left):
    """Left-padded forward *without* position_ids (the bug the adapter avoids)."""
    ids = torch.tensor([[PAD] * pad_left + list(prompt) + list(response)])
    attn = torch.tensor([[0] * pad_left + [1] * (len(prompt) + len(response))])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits[0].double()
    logits[:, list(BANNED)] = -torch.inf
    logp = torch.log_softmax(logits, -1)
    start = pad_left + len(prompt)
    return sum(logp[start + t - 1, response[t]].item() for t in range(len(response)))


@pytest.mark.parametrize("name", MODELS)
def test_padding_and_batching_invariance(policies, name):
    """Test 12: a (prompt, response) log-prob alone == inside a left-padded mixed batch (1e-12)."""
    policy = policies[name, "eos"]
    prompt, response = PROMPTS[0], [4, EOS, PAD]
    alone = np.asarray(policy.logprob([prompt], (np.array([response]), np.array([[True, True, False]]))))
    batch_tokens = np.array([[3, 5, 4], response, [EOS, PAD, PAD], [5, 5, EOS]])
    batch_mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], bool)
    batch_prompts = [PROMPTS[1], prompt, PROMPTS[1] + [3, 4], prompt]
    mixed = np.asarray(policy.logprob(batch_prompts, (batch_tokens, batch_mask)))
    per_token = np.asarray(policy.logprob(batch_prompts, (batch_tokens, batch_mask), per_token=True))
    np.testing.assert_allclose(mixed[1], alone[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(per_token.sum(1), mixed, rtol=0, atol=1e-12)
    assert (per_token[~batch_mask] == 0).all()
    no_positions = _unpositioned_logprob(policy.model, prompt, response[:2], pad_left=5)
    print(f"{name}: alone {alone[0]:.6f}, in a mixed batch {mixed[1]:.6f}, "
          f"left-padded without position_ids {no_positions:.6f}")
    if name == "gpt2":   # absolute positions: the test can fail
        assert abs(no_positions - alone[0]) > 1e-3


# -- test 13 --------------------------------------------------------------------------------------------------
def test_pad_equal_eos_keeps_the_eos_term(policies):
    """Test 13: with pad == eos the response log-prob includes the EOS term (masks come from lengths)."""
    policy = policies["gpt2", "eos"]
    assert policy.pad_id == EOS and policy.eos_ids == (EOS,)
    prompt = PROMPTS[1]
    tokens = np.array([[3, EOS, EOS]])          # "a <eos>" then pad (== eos)
    mask = np.array([[True, True, False]])
    got = float(np.asarray(policy.logprob([prompt], (tokens, mask)))[0])
    with_eos = loop_logprob(policy.model, prompt, [3, EOS])
    without_eos = loop_logprob(policy.model, prompt, [3])
    naive = float(np.asarray(policy.logprob([prompt], (tokens, tokens != policy.pad_id)))[0])
    print(f"log pi(a <eos>) {got:.6f}; loop {with_eos:.6f}; mask from tokens != pad {naive:.6f}")
    assert abs(got - with_eos) < 1e-10
    assert abs(got - without_eos) > 1e-3 and abs(naive - got) > 1e-3

    r = policy.sample(jax.random.key(5), PROMPTS, 64)
    lengths = r.mask.sum(1)
    last = r.tokens[np.arange(len(lengths)), lengths - 1]
    assert r.ended_with_eos.any() and (~r.ended_with_eos).any()
    np.testing.assert_array_equal(r.ended_with_eos, last == EOS)
    assert (lengths[~r.ended_with_eos] == L).all()
    assert (r.tokens[~r.mask] == policy.pad_id).all()


# -- test 14 --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_determinism_and_global_rng(policies, name):
    """Test 14: bitwise-equal scoring (dropout off), seeded sampling, the global torch RNG untouched."""
    policy = policies[name, "eos"]
    tokens, mask = enumerate_space("eos")
    prompts = [PROMPTS[i % 2] for i in range(len(tokens))]
    assert not policy.model.training
    first = np.asarray(policy.logprob(prompts, (tokens, mask)))
    assert np.array_equal(first, np.asarray(policy.logprob(prompts, (tokens, mask))))
    policy.model.train()          # the dropout is real: in train mode two passes differ
    try:
        with torch.no_grad():
            a, b = (policy.logprob_torch(prompts, (tokens, mask)) for _ in range(2))
    finally:
        policy.model.eval()
    assert not torch.equal(a, b)

    torch.manual_seed(1234)
    state = torch.get_rng_state()
    r1 = policy.sample(jax.random.key(7), PROMPTS, 32)
    assert torch.equal(state, torch.get_rng_state())
    r2 = policy.sample(jax.random.key(7), PROMPTS, 32)
    r3 = policy.sample(jax.random.key(8), PROMPTS, 32)
    assert r1.seed == r2.seed != r3.seed
    assert np.array_equal(r1.tokens, r2.tokens) and np.array_equal(r1.mask, r2.mask)
    assert not np.array_equal(r1.tokens, r3.tokens)
    assert torch.equal(state, torch.get_rng_state())


# -- test 15 --------------------------------------------------------------------------------------------------
def _torch_loss(name, lp, fixed, kl_coef=0.7, tau=0.4, alpha=0.3):
    h = (lp["chosen"] - torch.as_tensor(fixed["ref_chosen"])) - (lp["rejected"] - torch.as_tensor(fixed["ref_rejected"]))
    m = torch.as_tensor(fixed["mask"], dtype=torch.float64)
    mean = lambda x: (x * m).sum() / m.sum()
    if name == "dpo":
        return mean(-torch.nn.functional.logsigmoid(kl_coef * h))
    if name == "ipo":
        return mean((h - 1 / (2 * tau)) ** 2)
    return mean(-torch.nn.functional.logsigmoid(kl_coef * h)) + alpha * mean(lp["explore"])   # cal_mask = mask


def _grads(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("loss", ["dpo", "ipo", "xpo"])
def test_vjp_bridge_equals_torch_loss(policies, loss):
    """Test 15: the parameter gradient of the JAX loss through torch.autograd.backward == the torch loss's."""
    policy = policies["gpt2", "eos"]
    tokens, mask = enumerate_space("eos")
    rng = np.random.default_rng(1)
    rows = {k: rng.choice(len(tokens), 6, replace=False) for k in ("chosen", "rejected", "explore")}
    prompts = [PROMPTS[i % 2] for i in range(6)]
    inputs = {k: (prompts, (tokens[r], mask[r])) for k, r in rows.items()}
    if loss != "xpo":
        inputs.pop("explore")
    fixed = {"ref_chosen": rng.normal(-3, 1, 6), "ref_rejected": rng.normal(-3, 1, 6),
             "mask": np.array([1, 1, 1, 1, 0, 1], bool)}
    hyper = {"dpo": dict(kl_coef=0.7), "ipo": dict(tau=0.4), "xpo": dict(kl_coef=0.7, alpha=0.3)}[loss]
    loss_fn = lm_train.objective(loss, **hyper)

    policy.model.zero_grad(set_to_none=True)
    logps = {k: policy.logprob_torch(*args) for k, args in inputs.items()}
    value = lm_train.torch_backward(loss_fn, logps, fixed)
    bridge = _grads(policy.model).clone()

    policy.model.zero_grad(set_to_none=True)
    logps = {k: policy.logprob_torch(*args) for k, args in inputs.items()}
    reference = _torch_loss(loss, logps, fixed)
    reference.backward()
    direct = _grads(policy.model).clone()
    policy.model.zero_grad(set_to_none=True)
    diff = (bridge - direct).abs().max().item()
    print(f"{loss}: loss {value:.6f} vs torch {reference.item():.6f}; max |grad diff| {diff:.1e} "
          f"(|grad| max {direct.abs().max().item():.2e})")
    assert abs(value - reference.item()) < 1e-12
    assert direct.abs().max().item() > 1e-3
    assert diff <= 1e-12

    # torch_step with plain SGD moves the parameters by -lr * gradient.
    before = [p.detach().clone() for p in policy.model.parameters()]
    state = {k: v.detach().clone() for k, v in policy.model.state_dict().items()}
    try:
        optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.01)
        info = lm_train.torch_step(policy, optimizer, loss_fn, inputs, fixed)
        moved = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(policy.model.parameters(), before)])
        assert abs(info["loss"] - value) < 1e-12
        assert (moved + 0.01 * direct).abs().max().item() <= 1e-14
    finally:
        policy.model.load_state_dict(state)
        policy.model.zero_grad(set_to_none=True)


def test_objective_refuses_missing_and_unknown_hyper_parameters():
    with pytest.raises(ValueError, match=r"objective 'dpo' with hyper-parameters \['beta'\] is not allowed: dpo takes "
                                         r"kl_coef\."):
        lm_train.objective("dpo", beta=0.1)
    with pytest.raises(ValueError, match=r"\['kl_coef'\] is not allowed: vpo takes kl_coef, alpha \[, sign\]\."):
        lm_train.objective("vpo", kl_coef=0.1)
    lm_train.objective("vpo", kl_coef=0.1, alpha=0.5, sign=-1)


def test_jax_step_matches_closed_form_dpo_gradient():
    """The JAX backend: a tabular softmax policy, whose DPO gradient is closed form, and one SGD step.

    With ``log pi(a|x) = theta[x, a] - logsumexp theta[x]`` the log-partition cancels inside ``h``, so
    ``d loss / d theta[x, w] = -kl_coef sigma(-kl_coef h) / B`` and ``+kl_coef sigma(-kl_coef h) / B`` at ``(x, l)``.
    """
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        theta = jnp.asarray(rng.normal(size=(3, 5)))
        x = jnp.array([0, 1, 2, 0]); w = jnp.array([1, 2, 3, 4]); l_ = jnp.array([0, 0, 1, 2])
        fixed = {"ref_chosen": jnp.asarray(rng.normal(size=4)), "ref_rejected": jnp.asarray(rng.normal(size=4))}
        kl_coef, lr = 0.8, 0.1

        def logprob_fn(params, contexts, actions):
            return jax.nn.log_softmax(params[contexts], -1)[jnp.arange(len(actions)), actions]

        loss_fn = lm_train.objective("dpo", kl_coef=kl_coef)
        optimizer = optax.sgd(lr)
        state = lm_train.jax_init(theta, optimizer)
        inputs = {"chosen": (x, w), "rejected": (x, l_)}
        step = jax.jit(lm_train.jax_step, static_argnums=(1, 2, 3))
        new, info = step(state, optimizer, logprob_fn, loss_fn, inputs, fixed)
        h = (theta[x, w] - theta[x, l_]) - (fixed["ref_chosen"] - fixed["ref_rejected"])
        coef = kl_coef * jax.nn.sigmoid(-kl_coef * h) / len(x)
        grad = np.zeros((3, 5))
        np.add.at(grad, (np.asarray(x), np.asarray(w)), -np.asarray(coef))
        np.add.at(grad, (np.asarray(x), np.asarray(l_)), np.asarray(coef))
        np.testing.assert_allclose(float(info["loss"]), float(jnp.mean(jax.nn.softplus(-kl_coef * h))), atol=1e-14)
        np.testing.assert_allclose(np.asarray(new.params), np.asarray(theta) - lr * grad, rtol=0, atol=1e-14)
        assert int(new.step) == 1


def test_modules_import_without_torch():
    """The extra is optional: the modules import without torch; building a policy names the extra."""
    code = (
        "import sys\n"
        "import algorithms.lm.hf_policy as hf, bandits.lm.hf_features, algorithms.lm.train\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
        "sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "try:\n    hf.HFPolicy('.')\nexcept ImportError as err:\n    print('ERR', err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, error = out.stdout.split("\n", 1)
    assert first.split() == ["False", "False"]
    assert error.startswith("ERR") and "rlhf-bandits[llm]" in error


def test_bad_inputs_name_the_field(policies):
    policy = policies["llama", "eos"]
    with pytest.raises(ValueError, match="responses.mask"):
        policy.logprob([PROMPTS[0]], (np.array([[3, 4, 5]]), np.array([[True, False, True]])))
    with pytest.raises(ValueError, match="multiple of the number of prompts"):
        policy.logprob(PROMPTS, (np.array([[3, 4, 5]] * 3), np.ones((3, 3), bool)))
    with pytest.raises(ValueError, match="banned_token_ids"):
        HFPolicy(policy.path, dtype="float64", eos_token_id=EOS, banned_token_ids=(EOS,))
    with pytest.raises(ValueError, match="path"):
        HFPolicy(policy.path / "missing")
