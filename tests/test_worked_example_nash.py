"""The README's worked example of a new Nash method (a plugin registering a shrunk plug-in equilibrium,
run by nash-intransitive against the built-ins) runs as written."""
import shlex

import numpy as np

from algorithms.nash import methods
from experiments.engine import cli, storage
from tests.helpers import readme_example


def _blocks():
    return readme_example("my_nash")


def test_readme_nash_worked_example_runs(tmp_path, monkeypatch):
    code, command = _blocks()
    (tmp_path / "my_nash.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(command)
    assert argv[:3] == ["rlhf-bandits", "run", "nash-intransitive"]
    assert "shrunk_nash" in argv[argv.index("--set") + 1]
    # the README's command, made small: two seeds, a tiny world, the new method against two built-ins
    small = ["--seeds", "2", "--set", "n_contexts=3", "n_actions=4", "dim=2", "skew_strengths=0,4", "n=64",
             "algorithms=bt_gibbs,nash_mle,shrunk_nash"]
    try:
        assert cli.main(argv[1:] + small) == 0
        run_dir = tmp_path / "runs" / "nash-intransitive"
        table = storage.read_results(run_dir)
        assert set(np.unique(table["algorithm"])) == {"bt_gibbs", "nash_mle", "shrunk_nash"}
        mine = table["algorithm"] == "shrunk_nash"
        assert mine.sum() == 2 * 2 and np.all(table["n"][mine] == 64)
        assert np.all(np.isfinite(table["nash_gap"][mine])) and np.all(table["nash_gap"][mine] >= -1e-9)
        # shrinking the estimate towards P = 1/2 keeps the policy closer to pi0 than the plug-in equilibrium
        plug_in = table["algorithm"] == "nash_mle"
        assert table["kl_to_ref"][mine].mean() < table["kl_to_ref"][plug_in].mean()
        manifest = storage.read_manifest(run_dir)
        assert manifest["plugins"] == [str((tmp_path / "my_nash.py").resolve())]
        assert "shrunk_nash/nash_gap_s_max" in manifest["summary"]
        assert (run_dir / "nash_intransitive.png").exists()
        # re-plotting in this process: the plugin is imported already (a new process needs --plugin again)
        assert cli.main(["plot", str(run_dir)]) == 0
    finally:
        methods.METHODS.pop("shrunk_nash", None)
