"""A Hugging Face causal LM as a language policy: sample, score, featurize (docs/llm_bridge.md §1.2, §1.5, §2(a)).

``HFPolicy`` wraps a *local* checkpoint directory (safetensors, or one GGUF file via ``gguf_file=``), loaded
offline (``HF_HUB_OFFLINE=1``, ``local_files_only=True``, ``trust_remote_code=False``). torch and transformers
are the optional ``llm`` extra: they are imported when a policy is built, never when this module is imported,
and a missing extra raises an ImportError that says what to install.

Conventions (shared with the JAX tiny LMs, ``bandits/lm/space.py``):

- A prompt is a token-id sequence (a string is tokenised *once* by ``encode_prompts``; never re-tokenise
  decoded text). A response is a padded ``tokens int32 [B, L]`` with ``mask bool [B, L]`` True on the
  response's own tokens, EOS included. Masks come from lengths, never from ``tokens != pad_id``: ``pad_id``
  may equal an EOS id (GPT-2, many Llama fine-tunes), and the genuine EOS must keep its term.
- ``logprob`` is TRL's per-sequence recipe: ``log pi(y|x) = sum_t mask_t log pi(y_t | x, y_<t)``, with
  ``per_token=True`` giving the ``[B, L]`` terms (zero off the mask).
- A response with ``L`` tokens and no EOS is "truncated", an outcome of its own (``ended_with_eos=False``),
  so the probabilities of all responses of at most ``L`` tokens sum to 1 exactly.

The pitfalls of docs/llm_bridge.md §1.5 that this adapter owns:

1. Pure ancestral sampling at temperature 1: a fresh ``GenerationConfig`` with ``do_sample=True,
   temperature=1, top_k=0, top_p=1`` and every other logits transform neutral. The checkpoint's
   ``generation_config.json`` is kept only for the record (``checkpoint_generation_config``): transformers
   fills every *unset* field of a passed config from it, so the model's own generation config is replaced by
   a neutral one as well.
2. One support mask: token ids outside the response space (``banned_token_ids``) get logit ``-inf`` in
   sampling (a logits processor) and in scoring, through the same function, so ``sum_y pi(y|x) = 1`` over
   the space that ``sample`` draws from.
3. Left-padded prompts with explicit ``position_ids = cumsum(attention_mask) - 1``: a (prompt, response)
   log-prob does not depend on what else is in the batch (GPT-2's absolute positions break otherwise).
4. pad == eos: lengths, not pad tokens, define masks.
5. Evaluation mode (dropout off) from construction on, also while training through ``logprob_torch``.
6. Scoring never reuses generation scores: a separate full forward, logits upcast (to float32, or to the
   model's float64) before the log-softmax.
7. Seeds: an int seed derived from the JAX key, applied inside ``torch.random.fork_rng`` so the caller's
   global torch RNG is untouched; CPU sampling is bitwise reproducible.
"""
from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from bandits import validation as v
from bandits.lm.torch_stack import import_torch_stack

DTYPES = ("float32", "float64", "bfloat16", "float16")


class HFResponses(NamedTuple):
    """Responses drawn by ``HFPolicy.sample``; ``tokens``/``mask`` follow the bridge's convention."""

    tokens: np.ndarray          # int32 [B, L], filled with pad_id after each response's end
    mask: np.ndarray            # bool [B, L], True on the response's tokens (EOS included)
    ended_with_eos: np.ndarray  # bool [B]; False: L tokens without EOS (truncated)
    prompt_index: np.ndarray   # int [B], the prompt of each row (prompt-major: row i*n + j is prompt i)
    seed: int                  # the torch seed derived from the key (for the manifest)


@functools.lru_cache(maxsize=None)
def _support_processor_class():
    """A transformers ``LogitsProcessor`` that applies ``HFPolicy._apply_support`` (built lazily)."""
    from transformers import LogitsProcessor

    class SupportMask(LogitsProcessor):
        def __init__(self, apply):
            self.apply = apply

        def __call__(self, input_ids, scores):
            return self.apply(scores)

    return SupportMask


def _token_ids(field: str, value, vocab: int) -> tuple[int, ...]:
    ids = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < vocab:
            v.fail(field, value, f"a token id or a sequence of token ids in [0, {vocab})")
    return tuple(int(i) for i in ids)


class HFPolicy:
    """A local causal-LM checkpoint as a ``LanguagePolicy`` (docs/llm_bridge.md §1.2; module docstring).

    path: a checkpoint directory (``config.json`` + weights, or the directory of ``gguf_file``).
    gguf_file: a GGUF file name inside ``path`` (dequantised by transformers; use ``dtype="float32"``).
    dtype: the weights' dtype, one of ``DTYPES``. device: a torch device string.
    max_new_tokens: the response length bound ``L``.
    eos_token_id: "auto" (the checkpoint's generation config, else its model config, else the tokenizer),
        an id or ids, or None for the fixed-length space (``L`` tokens, no stopping).
    banned_token_ids: ids outside the response space (the shared support mask; EOS ids must stay allowed).
    chat_template: ``encode_prompts`` wraps each string as one user turn with the tokenizer's chat template
        and ``add_generation_prompt=True``.
    batch_size: rows per forward pass in ``logprob`` and ``features`` (None: all at once).
    """

    def __init__(self, path, *, gguf_file: str | None = None, dtype: str = "float32", device: str = "cpu",
                 max_new_tokens: int = 16, eos_token_id: Any = "auto", banned_token_ids: Sequence[int] = (),
                 chat_template: bool = False, batch_size: int | None = None):
        torch, transformers = import_torch_stack()
        path = Path(path)
        if not path.is_dir():
            v.fail("path", str(path), "an existing local checkpoint directory")
        if gguf_file is not None and not (path / gguf_file).is_file():
            v.fail("gguf_file", gguf_file, f"the name of a GGUF file inside {str(path)!r}")
        v.check_choice("dtype", dtype, DTYPES)
        self.max_new_tokens = v.check_int("max_new_tokens", max_new_tokens, 1)
        self.batch_size = None if batch_size is None else v.check_int("batch_size", batch_size, 1)
        self.chat_template = bool(chat_template)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        load = dict(local_files_only=True, trust_remote_code=False)
        if gguf_file is not None:
            load["gguf_file"] = gguf_file
        self.path, self.gguf_file = path, gguf_file
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), **load)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path), dtype=getattr(torch, dtype), **load).to(device)
        self.model.eval()
        self.device = torch.device(device)
        self.dtype = self.model.dtype
        self.score_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])

        checkpoint = self.model.generation_config
        self.checkpoint_generation_config = checkpoint.to_dict()
        if isinstance(eos_token_id, str) and eos_token_id == "auto":
            eos_token_id = next((e for e in (checkpoint.eos_token_id, self.model.config.eos_token_id,
                                             self.tokenizer.eos_token_id) if e is not None), None)
        self.eos_ids = () if eos_token_id is None else _token_ids("eos_token_id", eos_token_id, self.vocab_size)
        self.banned_ids = _token_ids("banned_token_ids", banned_token_ids, self.vocab_size)
        if set(self.banned_ids) & set(self.eos_ids):
            v.fail("banned_token_ids", banned_token_ids, f"ids other than the EOS ids {self.eos_ids}")
        if len(set(self.banned_ids)) >= self.vocab_size:
            v.fail("banned_token_ids", banned_token_ids, "a set that leaves at least one token allowed")
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0))
        banned = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
        banned[list(self.banned_ids)] = True
        self._banned = banned

        neutral = dict(pad_token_id=self.pad_id, eos_token_id=list(self.eos_ids) or None,
                       bos_token_id=checkpoint.bos_token_id)
        # generate() fills every unset field of the passed config from model.generation_config: neutralise it.
        self.model.generation_config = transformers.GenerationConfig(**neutral)
        self.generation_config = transformers.GenerationConfig(
            do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_p=None, typical_p=1.0,
            epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0, no_repeat_ngram_size=0,
            bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None, forced_bos_token_id=None,
            forced_eos_token_id=None, min_length=0, min_new_tokens=None, num_beams=1,
            max_new_tokens=self.max_new_tokens, renormalize_logits=False, use_cache=True, **neutral)

    # -- inputs ---------------------------------------------------------------------------------------------
    def encode_prompts(self, texts: Sequence[str]) -> list[list[int]]:
        """Tokenise prompts once (with the chat template when ``chat_template``); returns id lists."""
        out = []
        for text in texts:
            if not isinstance(text, str):
                v.fail("texts", text, "a sequence of strings")
            if self.chat_template:
                ids = self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                         add_generation_prompt=True, tokenize=True)
                ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            else:
                ids = self.tokenizer(text)["input_ids"]
            out.append([int(i) for i in ids])
        return out

    def _prompt_ids(self, prompts) -> list[list[int]]:
        if isinstance(prompts, str) or len(prompts) == 0:
            v.fail("prompts", prompts, "a non-empty sequence of strings or of token-id sequences")
        if all(isinstance(p, str) for p in prompts):
            prompts = self.encode_prompts(prompts)
        out = []
        for i, p in enumerate(prompts):
            ids = [int(t) for t in np.asarray(p).reshape(-1)]
            if not ids or min(ids) < 0 or max(ids) >= self.vocab_size:
                v.fail(f"prompts[{i}]", p, f"a non-empty sequence of token ids in [0, {self.vocab_size})")
            out.append(ids)
        return out

    def _responses(self, responses) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens int64 [B, L], lengths [B])`` from an object with ``.tokens``/``.mask`` or a pair."""
        tokens, mask = (responses.tokens, responses.mask) if hasattr(responses, "tokens") else responses
        tokens = np.asarray(tokens)
        mask = np.asarray(mask).astype(bool)
        if tokens.ndim != 2:
            raise ValueError(f"responses.tokens has shape {tokens.shape}, which is not allowed: it must be "
                             "[B, L] (one padded response per row).")
        v.check_shape("responses.mask", mask, tokens.shape)
        lengths = mask.sum(1)
        if not np.array_equal(mask, np.arange(tokens.shape[1])[None, :] < lengths[:, None]):
            row = int(np.argmax((mask != (np.arange(tokens.shape[1]) < lengths[:, None])).any(1)))
            raise ValueError(f"responses.mask[{row}]={mask[row].tolist()} is not allowed: a response mask must "
                             "be True on a prefix (t < length) and False after it.")
        valid = tokens[mask]
        if valid.size and (valid.min() < 0 or valid.max() >= self.vocab_size):
            v.fail("responses.tokens", "ids outside the vocabulary", f"token ids in [0, {self.vocab_size})")
        return np.where(mask, tokens, self.pad_id).astype(np.int64), lengths

    def _pair(self, prompts, responses):
        prompt_ids = self._prompt_ids(prompts)
        tokens, lengths = self._responses(responses)
        B = tokens.shape[0]
        if B % len(prompt_ids):
            raise ValueError(f"{B} responses for {len(prompt_ids)} prompts is not allowed: the number of responses "
                             "must be a multiple of the number of prompts (prompt-major, as `sample` returns).")
        reps = B // len(prompt_ids)
        return [p for p in prompt_ids for _ in range(reps)], tokens, lengths

    def _apply_support(self, logits):
        """The shared support mask: ``-inf`` on ``banned_token_ids`` (sampling and scoring both call this)."""
        if not self.banned_ids:
            return logits
        return logits.masked_fill(self._banned[: logits.shape[-1]], float("-inf"))

    def _batch(self, prompt_ids, tokens, lengths):
        """Left-padded prompts, right-padded responses, attention mask and explicit position ids."""
        torch, _ = import_torch_stack()
        P = max(len(p) for p in prompt_ids)
        L = max(int(lengths.max()), 1)
        B = len(prompt_ids)
        ids = np.full((B, P + L), self.pad_id, np.int64)
        attn = np.zeros((B, P + L), np.int64)
        for b, p in enumerate(prompt_ids):
            ids[b, P - len(p):P] = p
            attn[b, P - len(p):P + int(lengths[b])] = 1
        ids[:, P:] = tokens[:, :L]
        position = np.maximum(np.cumsum(attn, 1) - 1, 0)
        to = functools.partial(torch.as_tensor, device=self.device)
        return to(ids), to(attn), to(position), P, L

    # -- scoring --------------------------------------------------------------------------------------------
    def _token_logprobs(self, prompt_ids, tokens, lengths):
        """Per-token ``log pi(y_t | x, y_<t)`` [B, L] (zero off the mask), a torch tensor with autograd."""
        torch, _ = import_torch_stack()
        ids, attn, position, P, L = self._batch(prompt_ids, tokens, lengths)
        logits = self.model(input_ids=ids, attention_mask=attn, position_ids=position, use_cache=False).logits
        logits = self._apply_support(logits[:, P - 1:P - 1 + L].to(self.score_dtype))
        targets = ids[:, P:P + L]
        picked = torch.gather(logits, -1, targets[..., None])[..., 0] - torch.logsumexp(logits, -1)
        valid = torch.arange(L, device=self.device)[None, :] < torch.as_tensor(lengths, device=self.device)[:, None]
        per_token = torch.where(valid, picked, torch.zeros((), dtype=picked.dtype, device=self.device))
        full = tokens.shape[1]
        if full > L:
            per_token = torch.nn.functional.pad(per_token, (0, full - L))
        return per_token

    def logprob_torch(self, prompts, responses, per_token: bool = False):
        """``sum_t mask_t log pi(y_t | x, y_<t)`` as a torch tensor [B] ([B, L] if ``per_token``) with autograd.

        ``prompts`` are repeated prompt-major when there are fewer of them than responses (``sample``'s order).
        """
        per = self._token_logprobs(*self._pair(prompts, responses))
        return per if per_token else per.sum(-1)

    def _chunks(self, B: int):
        step = self.batch_size or B
        return [slice(i, min(i + step, B)) for i in range(0, B, step)]

    def logprob(self, prompts, responses, per_token: bool = False) -> np.ndarray:
        """``logprob_torch`` without autograd, as a float64 NumPy array [B] (or [B, L]).

        NumPy, so the values stay float64 whether or not ``jax_enable_x64`` is on; JAX code takes them as is.
        """
        torch, _ = import_torch_stack()
        prompt_ids, tokens, lengths = self._pair(prompts, responses)
        parts = []
        with torch.no_grad():
            for s in self._chunks(len(prompt_ids)):
                per = self._token_logprobs(prompt_ids[s], tokens[s], lengths[s])
                parts.append((per if per_token else per.sum(-1)).double().cpu().numpy())
        return np.concatenate(parts)

    def features(self, prompts, responses) -> np.ndarray:
        """P3's feature map: the final hidden state at the last token of prompt + response, float64 [B, d].

        The hidden state is the base model's ``last_hidden_state`` (after the final norm), read at the
        response's last token (EOS included), or at the prompt's last token for an empty response.
        """
        torch, _ = import_torch_stack()
        prompt_ids, tokens, lengths = self._pair(prompts, responses)
        parts = []
        with torch.no_grad():
            for s in self._chunks(len(prompt_ids)):
                ids, attn, position, P, _ = self._batch(prompt_ids[s], tokens[s], lengths[s])
                hidden = self.model.base_model(input_ids=ids, attention_mask=attn, position_ids=position,
                                               use_cache=False).last_hidden_state
                last = torch.as_tensor(P - 1 + lengths[s], device=self.device)
                parts.append(hidden[torch.arange(len(last), device=self.device), last].double().cpu().numpy())
        return np.concatenate(parts)

    # -- sampling -------------------------------------------------------------------------------------------
    def _rng_devices(self):
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def sample(self, key: jax.Array, prompts, n: int) -> HFResponses:
        """``n`` ancestral samples per prompt at temperature 1 on the support, ``len(prompts) * n`` rows.

        Rows are prompt-major. The torch seed is ``randint(key, 0, 2^31 - 1)``; the global torch RNG state
        is restored afterwards (``torch.random.fork_rng``).
        """
        torch, _ = import_torch_stack()
        n = v.check_int("n", n, 1)
        prompt_ids = self._prompt_ids(prompts)
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        P = max(len(p) for p in prompt_ids)
        ids = np.full((len(prompt_ids), P), self.pad_id, np.int64)
        attn = np.zeros_like(ids)
        for b, p in enumerate(prompt_ids):
            ids[b, P - len(p):] = p
            attn[b, P - len(p):] = 1
        processor = _support_processor_class()(self._apply_support)
        config = copy.deepcopy(self.generation_config)
        config.num_return_sequences = n
        with torch.no_grad(), torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=torch.as_tensor(ids, device=self.device),
                attention_mask=torch.as_tensor(attn, device=self.device),
                generation_config=config,
                logits_processor=[processor] if self.banned_ids else None)
        generated = out[:, P:].cpu().numpy()
        L = self.max_new_tokens
        B, produced = generated.shape
        lengths = np.full(B, produced)
        if self.eos_ids:
            is_eos = np.isin(generated, self.eos_ids)
            first = np.argmax(is_eos, 1)
            lengths = np.where(is_eos.any(1), first + 1, produced)
        mask = np.arange(L)[None, :] < lengths[:, None]
        tokens = np.full((B, L), self.pad_id, np.int64)
        tokens[:, :produced] = generated
        tokens = np.where(mask, tokens, self.pad_id)
        ended = np.zeros(B, bool)
        if self.eos_ids:
            ended = np.isin(tokens[np.arange(B), np.maximum(lengths - 1, 0)], self.eos_ids) & (lengths > 0)
        return HFResponses(tokens.astype(np.int32), mask, ended,
                           np.repeat(np.arange(len(prompt_ids)), n), seed)

    def parameters(self):
        """The model's torch parameters (for a torch optimizer)."""
        return self.model.parameters()

    def manifest(self) -> dict:
        """What a results manifest should record about this policy."""
        return dict(path=str(self.path), gguf_file=self.gguf_file, dtype=str(self.dtype),
                    score_dtype=str(self.score_dtype), max_new_tokens=self.max_new_tokens,
                    eos_ids=list(self.eos_ids), pad_id=self.pad_id, banned_token_ids=list(self.banned_ids),
                    generation_config=self.generation_config.to_dict(),
                    checkpoint_generation_config=self.checkpoint_generation_config)
