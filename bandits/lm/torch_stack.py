"""The optional torch + transformers stack of the LLM bridge (the ``llm`` extra), imported on demand.

Both the world's frozen feature maps (``bandits.lm.hf_features``) and the learners' trainable policy
(``algorithms.lm.hf_policy``) need it; neither imports torch at module import time.
"""
from __future__ import annotations

from bandits.validation import MissingDependencyError

INSTALL_HINT = ("install the optional LLM dependencies: `pip install torch==2.13.0` first (a CPU wheel; an "
                "unpinned torch may pull a multi-GB CUDA build), then `pip install 'rlhf-bandits[llm]'`")


def import_torch_stack():
    """``(torch, transformers)``, or a ``MissingDependencyError`` (an ImportError) naming the ``llm`` extra."""
    try:
        import torch
        import transformers
    except ImportError as err:   # pragma: no cover - exercised in a subprocess without torch
        raise MissingDependencyError(f"the Hugging Face adapter needs torch and transformers ({err}); "
                                     f"{INSTALL_HINT}.") from None
    return torch, transformers
