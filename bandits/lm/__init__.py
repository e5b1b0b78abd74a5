"""The LLM bridge, JAX side (docs/llm_bridge.md §0, §1, §2(b), §5.1): response spaces, two tiny language models
and their exact / candidate-set bandit instances. Never imports torch.

- ``space``: ``ResponseSpace`` (fixed-length or EOS), ``enumerate_responses``, ``response_index``, the shared
  ancestral sampler;
- ``tiny``: ``TinyLMConfig`` and a small causal transformer (realistic, misspecified);
- ``tree``: ``TreeConfig`` and the prefix-tree tabular LM (realizable: any law over the responses);
- ``exact``: ``exact_instance`` / ``candidate_instance`` (bandits ``Instance``s), the candidate-Gibbs KL,
  the best-of-n law with ties split by pi0 mass;
- ``kl_estimators``: k1/k2/k3 (per token and per sequence) with their exact moments and exact expected
  gradients against the true reverse/forward KL gradients (docs/llm_bridge.md §4).

The two LMs share one API (``init``, ``token_logprobs``, ``sequence_logprob``, ``enumerated_token_logprobs``,
``sample``), so they are used as modules: ``from bandits.lm import tiny, tree``.
"""
from bandits.lm import exact, kl_estimators, space, tiny, tree
from bandits.lm.exact import (best_of_n_law_split_ties, candidate_gibbs_kl, candidate_gibbs_policy,
                              candidate_instance, candidates_from_exact, enumerated_log_policy,
                              exact_instance, lift_candidate_policy, segment_logsumexp)
from bandits.lm.space import (ResponseSpace, ancestral_sample, canonical_code, enumerate_responses,
                              lengths_to_mask, masked_token_logprobs, response_index)
from bandits.lm.tiny import TinyLMConfig
from bandits.lm.tree import TreeConfig, params_from_log_probs

__all__ = [name for name in dir() if not name.startswith("_")]
