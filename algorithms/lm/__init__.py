"""Learners of the LLM bridge (docs/llm_bridge.md §1.4, §2(a)): iterative DPO on a JAX tiny LM with exact
evaluation, the trainable Hugging Face policy, its training step and the online loop on real text."""
