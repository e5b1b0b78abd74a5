"""The README's worked example (a user-defined exploration bonus ranked by bonus-compare) runs as written."""
import shlex

import numpy as np

from algorithms.online import strategies
from experiments.engine import cli, storage
from tests.helpers import readme_example


def _blocks():
    return readme_example("my_bonus")


def test_readme_worked_example_runs(tmp_path, monkeypatch):
    code, command = _blocks()
    (tmp_path / "my_bonus.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(command)
    assert argv[:3] == ["rlhf-bandits", "run", "bonus-compare"]
    # the README's command, made small: fewer seeds and rounds, the user's bonus against three built-ins
    small = ["--seeds", "4", "--set", "iterations=2", "algorithms=enhancer,optimism,xpo,variance_bonus"]
    try:
        assert cli.main(argv[1:] + small) == 0
        run_dir = tmp_path / "runs" / "bonus-compare"
        table = storage.read_results(run_dir)
        assert set(np.unique(table["algorithm"])) == {"enhancer", "optimism", "xpo", "variance_bonus"}
        manifest = storage.read_manifest(run_dir)
        assert manifest["plugins"] == [str((tmp_path / "my_bonus.py").resolve())]
        assert "hard/variance_bonus/rank" in manifest["summary"]
        assert (run_dir / "bonus_compare.png").exists()
        # re-plotting in this process: the plugin is imported already (a new process needs --plugin again)
        assert cli.main(["plot", str(run_dir)]) == 0
    finally:
        strategies.STRATEGIES.pop("variance_bonus", None)


def test_bad_plugin_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["run", "bonus-compare", "--plugin", str(tmp_path / "missing.py")]) == 2
    assert "plugin" in capsys.readouterr().err
