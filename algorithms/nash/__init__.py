"""General-preference (Nash) learners of P2 (docs/theory.md §3, §6): the learnable preference model, offline
pessimistic and online main-agent/enhancer Nash learning, and the tabular Nash dynamics (Nash-MD, SPPO,
INPO, online IPO)."""
