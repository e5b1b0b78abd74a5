"""Offline policy learners (docs/theory.md §2.2-2.3, §2.5, §5): P1's offline GSHF (MLE-Gibbs, Option I and
II) and its bounds, rejection sampling (best-of-n, RSO, P1's multi-step RS) and TMPS-PF of Zhao et al."""
