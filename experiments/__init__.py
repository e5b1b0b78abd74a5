"""Named experiments, the vectorized runner, result storage, plots and the command-line interface."""
