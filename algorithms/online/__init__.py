"""Online agents of P1 (docs/theory.md §2.4-2.5): the batch-online / hybrid loop, the pair-selection strategies
and their registry, P1's enhancer, the rejection-sampling pairings and the iterative-DPO agent."""
