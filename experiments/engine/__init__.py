"""The experiment engine: CLI, config overrides, registry, vectorized runner, storage, plotting, result
tables and statistics. It knows no particular experiment (the catalogue registers by module path)."""
