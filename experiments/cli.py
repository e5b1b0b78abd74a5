"""Command-line interface: ``python -m experiments`` or the ``rlhf-bandits`` console script."""
from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from experiments.demo import run_demo
    print(f"rlhf-bandits demo: one instance (seed {args.seed}), exact values in float64")
    for name, val in run_demo(args.seed).items():
        print(f"  {name:28s} {val: .6f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf-bandits", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build one instance and print its exact values")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
