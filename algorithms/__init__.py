"""The learners: estimators, confidence sets, offline/online/hybrid/Nash methods (no files, plots or CLI)."""
