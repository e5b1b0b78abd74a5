"""The command-line interface runs end to end."""
from experiments.cli import main


def test_demo_prints_exact_values(capsys):
    assert main(["demo", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "optimal_value J(pi*)" in out and "nash_gap(nash)" in out
    gap_line = [l for l in out.splitlines() if "nash_gap(nash)" in l][0]
    assert abs(float(gap_line.split()[-1])) < 1e-6
