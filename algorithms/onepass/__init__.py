"""One-pass reward estimation and the pipeline of P3 (docs/theory.md §4): OMD with a local norm, OGD,
HVP/CG and the MLE refit behind one protocol and registry with their options (``estimators``), the
instance family and the metrics of one estimate (``evaluation``), active selection, deployment rules and
the training-stage output policies."""
