"""Building blocks every learner family shares: BT maximum likelihood (linear and neural), the damped
Newton and SPD solves under it, confidence sets, the direct-alignment losses on log-prob arrays and the
optax training of tabular and linear-softmax policies (docs/theory.md §1.4, §6, §9.1)."""
