"""The README's offline worked example (a user-defined offline learner run by offline-rate) runs as written."""
import shlex

import numpy as np

from algorithms.offline import learners
from experiments.engine import cli, storage
from tests.helpers import readme_example


def _blocks():
    return readme_example("my_offline")


def test_readme_offline_worked_example_runs(tmp_path, monkeypatch):
    code, command = _blocks()
    (tmp_path / "my_offline.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(command)
    assert argv[:3] == ["rlhf-bandits", "run", "offline-rate"]
    small = ["--seeds", "3", "--set", "n_contexts=8", "n_actions=6", "dim=3", "sample_sizes=16,64", "panel_coverages="]
    try:
        assert cli.main(argv[1:] + small) == 0
        run_dir = tmp_path / "runs" / "offline-rate"
        table = storage.read_results(run_dir)
        assert set(np.unique(table["algorithm"])) == {"mle_gibbs", "option_ii", "half_pessimistic"}
        mine = table["algorithm"] == "half_pessimistic"
        assert np.all(np.isnan(table["bound"][mine])) and np.all(np.isfinite(table["subopt"][mine]))
        assert np.all(table["subopt"][mine] >= -1e-12) and np.all(table["subopt_kl"][mine] >= table["subopt"][mine])
        # common random numbers: every algorithm of a (seed, n) saw the same data, hence the same MLE error
        for seed in np.unique(table["seed"]):
            for n in (16, 64):
                rows = (table["seed"] == seed) & (table["n"] == n) & (table["setting"] == "canonical")
                assert len(np.unique(table["error_sigma_norm"][rows])) == 1
        assert "canonical/half_pessimistic/subopt_n_max" in storage.read_manifest(run_dir)["summary"]
        assert (run_dir / "offline_rate.png").exists()
        assert cli.main(["plot", str(run_dir)]) == 0
    finally:
        learners.LEARNERS.pop("half_pessimistic", None)


def test_offline_learner_registry_refuses_bad_entries():
    import pytest
    with pytest.raises(ValueError, match="offline learner name='mle_gibbs' is not allowed"):
        learners.register("mle_gibbs", learners.LEARNERS["mle_gibbs"])
    with pytest.raises(ValueError, match="offline learner name='a b' is not allowed"):
        learners.register("a b", learners.LEARNERS["mle_gibbs"])
    with pytest.raises(ValueError, match="bounded='regret' is not allowed"):
        learners.register("x", learners.OfflineLearner(lambda view, s: (view.instance.log_pi0, s), bounded="regret"))
    assert "x" not in learners.LEARNERS
