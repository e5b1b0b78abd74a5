"""The catalogue of named experiments (one module each; listed in ``experiments.engine.registry.BUILTIN``)."""
