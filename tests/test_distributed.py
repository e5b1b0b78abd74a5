"""``run --distributed`` (experiments.engine.distributed): two local CPU processes on JAX's distributed runtime
write the results.csv of a one-process run byte for byte; a process that fails stops the others with its
line; bad options are one line; the seed blocks cover every seed once, cut at chunk boundaries."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from experiments.engine import cli
from experiments.engine.distributed import blocks

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = """
    import jax
    from experiments.engine import registry
    from tests.test_merge import Toy

    class Failing(Toy):
        def run(self, config, seeds, progress):
            if jax.process_index() == 1:
                raise RuntimeError("simulated failure on process 1")
            return super().run(config, seeds, progress)

    registry.register("toy", Toy(), replace=True)
    registry.register("toy-failing", Failing(), replace=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(args, plugin, out):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RLHF_BANDITS_COMPILATION_CACHE": "off"}
    return [sys.executable, "-m", "experiments", "run", *args, "--plugin", str(plugin), "--out", str(out)], env


def _distributed(name, plugin, out, extra=()):
    port = _free_port()
    procs = []
    for i in range(2):
        argv, env = _cli([name, "--seeds", "6", "--chunk-size", "2", "--distributed", "--coordinator",
                          f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i), *extra], plugin, out)
        procs.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    return [(p.wait(timeout=300), *p.communicate()) for p in procs]


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "toy_plugin.py"
    path.write_text(textwrap.dedent(PLUGIN))
    return path


def test_two_processes_write_the_single_run_and_a_failure_stops_both(plugin, tmp_path):
    argv, env = _cli(["toy", "--seeds", "6", "--chunk-size", "2", "--quiet"], plugin, tmp_path / "single")
    subprocess.run(argv, env=env, cwd=ROOT, check=True, capture_output=True, timeout=300)
    (code0, out0, err0), (code1, out1, err1) = _distributed("toy", plugin, tmp_path / "dist")
    assert (code0, code1) == (0, 0), (err0[-2000:], err1[-2000:])
    run_dir = tmp_path / "dist" / "toy"
    assert out0.strip() == str(run_dir) and out1.strip() == ""
    assert (run_dir / "results.csv").read_bytes() == (tmp_path / "single" / "toy" / "results.csv").read_bytes()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["distributed"] == {"processes": 2, "blocks": [[0, 4], [4, 6]], "chunk_size": 2}
    assert manifest["seeds"] == 6 and [m["seed_range"] for m in manifest["merged_from"]] == [[0, 4], [4, 6]]
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == ["toy"]   # the blocks' staging is gone

    (code0, _, err0), (code1, _, err1) = _distributed("toy-failing", plugin, tmp_path / "failing")
    assert code0 == cli.EXIT_PEER and code1 != 0
    assert err0.strip().splitlines()[-1] == ("rlhf-bandits run: error: another process failed: process 1: "
                                             "simulated failure on process 1")
    assert "simulated failure on process 1" in err1
    assert not (tmp_path / "failing" / "toy-failing").exists()


@pytest.mark.parametrize("argv, words", [
    (["--distributed", "--coordinator", "127.0.0.1:1"], "--coordinator, --num-processes and --process-id go together"),
    (["--distributed", "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
     "process_id=2 is not allowed: need 0 <= process_id < num_processes = 2"),
    (["--process-id", "0"], "--coordinator, --num-processes and --process-id are options of --distributed"),
    (["--distributed", "--seed-range", "0:2"], "--seed-range is not allowed with --distributed"),
    (["--distributed", "--num-processes", "0"], "--num-processes: 0 is not allowed: must be an integer >= 1"),
])
def test_bad_distributed_options_are_one_line(argv, words, tmp_path, capsys):
    code = cli.main(["run", "offline-rate", "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_USAGE and len(err.splitlines()) == 1 and words in err, err


@settings(deadline=None, max_examples=200)
@given(st.integers(1, 500), st.integers(1, 9), st.one_of(st.none(), st.integers(1, 64)))
def test_blocks_cover_every_seed_once_cut_at_chunk_boundaries(n, p, chunk):
    parts = blocks(n, p, chunk)
    assert len(parts) == p and parts[0][0] == 0 and parts[-1][1] == n
    assert all(a <= b for a, b in parts) and all(parts[i][1] == parts[i + 1][0] for i in range(p - 1))
    assert all(b % (chunk or 1) == 0 or b == n for _, b in parts[:-1])
    unit = chunk or 1
    assert max(b - a for a, b in parts) <= -(-n // (p * unit)) * unit   # no block larger than it needs to be
