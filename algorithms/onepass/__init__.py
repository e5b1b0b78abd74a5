"""One-pass reward estimation and the pipeline of P3 (docs/theory.md §4): OMD with a local norm, OGD,
HVP/CG, the MLE refit baseline behind one estimator interface, active selection, deployment rules and
the training-stage output policies."""
