"""The README's online-agent worked example (a user-defined online agent run by online-explore) runs as written."""
import shlex

import numpy as np
import pytest

from algorithms.online import agents, loop
from experiments.engine import cli, storage
from tests.helpers import readme_example

# Until the lead pastes the example into README.md, the blocks are read from the helper's draft.


def _blocks():
    return readme_example('my_agent')


def test_readme_online_agent_worked_example_runs(tmp_path, monkeypatch):
    code, command = _blocks()
    (tmp_path / "my_agent.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(command)
    assert argv[:3] == ["rlhf-bandits", "run", "online-explore"]
    # the README's command, made small: fewer seeds, contexts and rounds
    small = ["--seeds", "3", "--set", "iterations=2", "n_contexts=8", "n_actions=6", "dim=3", "settings=hard"]
    try:
        assert cli.main(argv[1:] + small) == 0
        run_dir = tmp_path / "runs" / "online-explore"
        table = storage.read_results(run_dir)
        assert set(np.unique(table["algorithm"])) == {"enhancer", "pessimistic_enhancer", "pi0"}
        mine = table["algorithm"] == "pessimistic_enhancer"
        assert np.all(np.isnan(table["bound"][mine])) and np.all(np.isfinite(table["subopt"][mine]))
        assert np.all(np.isfinite(table["bound"][table["algorithm"] == "enhancer"]))
        assert np.all(table["subopt"][mine] >= -1e-12) and np.all(table["subopt_kl"][mine] >= table["subopt"][mine])
        # common random numbers: the same instance for every algorithm of a seed (pi_0 = pi0 for the main agent)
        first = table["iteration"] == 0
        np.testing.assert_allclose(table["subopt"][first & (table["algorithm"] == "enhancer")],
                                   table["subopt"][first & (table["algorithm"] == "pi0")], rtol=1e-12)
        # the new agent is used: its deployed policy differs from the main agent's under the same pairs
        last = table["iteration"] == table["iteration"].max()
        assert np.abs(table["subopt"][last & mine] - table["subopt"][last & (table["algorithm"] == "enhancer")]).max() > 0
        manifest = storage.read_manifest(run_dir)
        assert manifest["plugins"] == [str((tmp_path / "my_agent.py").resolve())]
        assert "hard/pessimistic_enhancer/final_subopt" in manifest["summary"]
        assert "hard/pessimistic_enhancer/nontrivial_frac" in manifest["summary"]   # its strategy's diagnostic
        assert (run_dir / "online_explore.png").exists()
        assert agents.agent_of("pessimistic_enhancer").linestyle == "-."
        # bonus-compare ranks it too: every registered online algorithm is one of its candidates
        from experiments.catalogue import bonus_compare
        assert "pessimistic_enhancer" in bonus_compare.presets["quick"].algorithm_names
        # re-plotting in this process: the plugin is imported already (a new process needs --plugin again)
        assert cli.main(["plot", str(run_dir)]) == 0
    finally:
        agents.ALGORITHMS.pop("pessimistic_enhancer", None)
        agents.AGENTS.pop("pessimistic", None)


def test_online_registries_refuse_bad_entries():
    act = lambda view, state, hyper: (loop.AgentPolicy(view.instance.log_pi0), state)
    with pytest.raises(ValueError, match="agent name='gibbs' is not allowed"):
        agents.register_agent("gibbs", loop.Agent(act))
    with pytest.raises(ValueError, match="online algorithm name='enhancer' is not allowed"):
        agents.register("enhancer", agents.OnlineAlgorithm("pi0"))
    with pytest.raises(ValueError, match="agent='no_agent' is not allowed"):
        agents.register("x", agents.OnlineAlgorithm("pi0", agent="no_agent"))
    assert "x" not in agents.names()
