"""Command-line interface: ``python -m experiments`` or the ``rlhf-bandits`` console script.

  list                                   experiment names and one-line descriptions
  run NAME [--preset P] [--seeds N] [--set FIELD=VALUE ...] [--out DIR] [--chunk-size C] [--no-x64]
           [--plugin FILE.py|MODULE ...] run, write DIR/NAME/{results.csv,manifest.json,figures}
  plot DIR                               re-draw figures from DIR's results.csv + manifest.json
  demo                                   one instance and its exact values
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence, TextIO

PROG = "rlhf-bandits"


def load_plugins(specs: Sequence[str]) -> list[str]:
    """Import each plugin (a ``.py`` file path or an importable module name) for its registrations
    (``algorithms.online.strategies.register``, ``experiments.engine.registry.register``, ...); returns the specs
    as recorded in the manifest (file paths made absolute, so ``plot`` can import them again)."""
    import importlib
    import importlib.util

    from experiments.engine.registry import UsageError

    recorded = []
    for spec in specs:
        path = Path(spec)
        try:
            if spec.endswith(".py") or path.exists():
                if not path.is_file():
                    raise UsageError(f"plugin={spec!r} is not allowed: no such file (give a .py file or "
                                     "an importable module name).")
                path = path.resolve()
                import hashlib
                name = f"rlhf_bandits_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
                if name not in sys.modules:
                    module_spec = importlib.util.spec_from_file_location(name, path)
                    module = importlib.util.module_from_spec(module_spec)
                    sys.modules[name] = module
                    try:
                        module_spec.loader.exec_module(module)
                    except BaseException:
                        del sys.modules[name]
                        raise
                recorded.append(str(path))
            else:
                importlib.import_module(spec)
                recorded.append(spec)
        except ModuleNotFoundError as err:
            raise UsageError(f"plugin={spec!r} is not allowed: {err} (give a .py file or an importable "
                             "module name).") from err
    return recorded


def run_experiment(name: str, preset: str = "quick", seeds: int | None = None,
                   overrides: Sequence[str] = (), out: str | Path = "results", x64: bool = True,
                   chunk_size: int | None = None, stream: TextIO | None = None,
                   command: Sequence[str] | None = None, plugins: Sequence[str] = ()) -> Path:
    """Run experiment ``name`` and write ``out/name/`` (results.csv, figures, then manifest.json).

    Configuration errors (unknown name, preset or field, bad value) raise ``ValueError`` before any
    computation. Finished seed chunks are kept until the run completes, so repeating an interrupted
    command resumes it. ``plugins`` are imported first (``load_plugins``). Returns the run directory.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from experiments.engine import registry, storage
    from experiments.engine.config import apply_overrides, config_hash, config_to_dict
    from experiments.engine.results import as_results
    from experiments.engine.runner import Progress

    plugins = load_plugins(plugins)
    experiment = registry.get(name)
    try:
        config = apply_overrides(registry.preset(experiment, name, preset), overrides)
    except registry.UsageError:
        raise
    except ValueError as err:
        raise registry.UsageError(str(err)) from err
    n_seeds = registry.default_seeds(experiment, preset) if seeds is None else int(seeds)
    if n_seeds < 1:
        raise registry.UsageError(f"seeds={n_seeds} is not allowed: seeds must be an integer >= 1.")
    run_dir = Path(out) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    with jax.enable_x64(x64):
        dtype = jnp.dtype(jnp.result_type(float)).name
        # The environment (git revision included) is read once, before running: the manifest must name
        # the code that computed the results, and saved chunks are reused only by the same code and
        # plugins (a dirty tree cannot be told apart from its commit: do not edit code mid-run).
        env = storage.environment()
        digest = config_hash(name, config, n_seeds, dtype, env["git"], env["versions"]["rlhf-bandits"], plugins)
        store = storage.ChunkStore(run_dir / storage.CHUNKS / digest)
        progress = Progress(name, stream, store, chunk_size)
        if store.count():
            progress.message(f"found {store.count()} saved chunk(s) of an interrupted run; resuming")
        progress.message(f"preset {preset}, {n_seeds} seeds, {dtype}, "
                         f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
        started = time.perf_counter()
        results = as_results(experiment.run(config, n_seeds, progress))
        wall = time.perf_counter() - started
    table = results.table
    non_finite = {k: int((~np.isfinite(v)).sum()) for k, v in table.items()
                  if v.dtype.kind == "f" and not np.all(np.isfinite(v))}
    # NaN in a column the experiment declares in `nan_columns` means "not applicable" (e.g. no bound
    # for that algorithm); anything else non-finite is suspect.
    nan_ok = set(getattr(experiment, "nan_columns", ()))
    suspect = {k: int((~np.isfinite(table[k]) & ~(np.isnan(table[k]) & (k in nan_ok))).sum())
               for k in non_finite}
    suspect = {k: c for k, c in suspect.items() if c}
    if suspect:
        progress.message(f"WARNING: non-finite values in results: {suspect}")
    if set(non_finite) - set(suspect):
        progress.message("NaN marks 'not applicable' in: " + ", ".join(sorted(set(non_finite) - set(suspect))))
    csv_path, digest_csv = storage.write_results(run_dir, table)
    plot_error = None
    try:  # a plotting bug must not lose the results: they are recorded, `plot DIR` retries
        figures = _relative(experiment.plot(table, config, run_dir), run_dir)
    except Exception as err:
        figures, plot_error = [], err
    timings = progress.timings()
    manifest = {
        "experiment": name,
        "description": registry.describe(experiment),
        "preset": preset,
        "overrides": list(overrides),
        "plugins": plugins,
        "config_type": f"{type(config).__module__}.{type(config).__qualname__}",
        "config": config_to_dict(config),
        "config_hash": digest,
        "seeds": n_seeds,
        "dtype": dtype,
        "x64": x64,
        **env,
        "timings": {"compile_s": timings["compile_s"], "run_s": timings["run_s"], "wall_s": wall,
                    "calls": timings["calls"]},
        "resumed_chunks": timings["resumed_chunks"],
        "command": shlex.join(command) if command is not None else None,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "summary": results.summary,
        "results": {"file": storage.RESULTS, "rows": results.n_rows,
                    "columns": storage.column_types(table), "sha256": digest_csv,
                    "non_finite": non_finite},
        "figures": figures,
        "plot_error": None if plot_error is None else f"{type(plot_error).__name__}: {plot_error}",
    }
    storage.write_manifest(run_dir, manifest)
    store.clear()
    if plot_error is not None:
        progress.message(f"results and manifest written to {run_dir}, but plotting failed; fix it and "
                         f"run `{PROG} plot {run_dir}`")
        raise plot_error
    if timings["resumed_chunks"]:
        progress.message(f"resumed: reused {timings['resumed_chunks']} saved chunk(s)")
    # compile/run are the vectorized calls' (run_vectorized); an experiment without any (hf-smoke) has wall only
    split = (f" (compile {timings['compile_s']:.1f} s, run {timings['run_s']:.1f} s)" if timings["calls"] else "")
    progress.message(f"wrote {csv_path} ({results.n_rows} rows), manifest.json, "
                     f"{len(figures)} figure file(s) in {wall:.1f} s{split}")
    return run_dir


def replot(path: str | Path, stream: TextIO | None = None) -> list[Path]:
    """Re-draw the figures of one run directory, or of every run directory inside ``path``."""
    from experiments.engine import registry, storage
    from experiments.engine.config import config_from_dict

    path = Path(path)
    if (path / storage.MANIFEST).exists():
        run_dirs = [path]
    else:
        run_dirs = sorted(p.parent for p in path.glob(f"*/{storage.MANIFEST}"))
        if not run_dirs:
            raise registry.UsageError(f"{path} holds no {storage.MANIFEST}: pass a directory written by "
                             f"`{PROG} run` (OUT/NAME) or its OUT.")
    written = []
    for run_dir in run_dirs:
        try:
            manifest = storage.read_manifest(run_dir)
            load_plugins(manifest.get("plugins", []))
            experiment = registry.get(manifest["experiment"])
            cls = type(experiment.presets.get(manifest.get("preset"))
                       or next(iter(experiment.presets.values())))
            config = config_from_dict(cls, manifest["config"])
            table = storage.read_results(run_dir)
        except registry.UsageError:
            raise
        except (OSError, KeyError, ValueError) as err:
            raise registry.UsageError(f"cannot re-plot {run_dir}: {err}") from err
        paths = [Path(p) for p in (experiment.plot(table, config, run_dir) or [])]
        manifest["figures"], manifest["plot_error"] = _relative(paths, run_dir), None
        storage.write_manifest(run_dir, manifest)
        if stream is not None:
            for p in paths:
                print(f"wrote {p}", file=stream)
        written.extend(paths)
    return written


def _relative(paths, run_dir: Path) -> list[str]:
    return [str(Path(p).relative_to(run_dir)) if Path(p).is_relative_to(run_dir) else str(p)
            for p in (paths or [])]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: must be an integer >= 1")
    return value


def _demo(args) -> int:
    from experiments.engine.demo import run_demo
    print(f"rlhf-bandits demo: one instance (seed {args.seed}), exact values in float64")
    for name, val in run_demo(args.seed).items():
        print(f"  {name:28s} {val: .6f}")
    return 0


def _list(args) -> int:
    from experiments.engine import registry
    names = registry.names()
    if not names:
        print("no experiments registered")
    width = max((len(n) for n in names), default=0)
    for name in names:
        try:
            text = registry.describe(registry.get(name))
        except Exception as err:  # listing must survive one broken module
            text = f"(cannot load: {type(err).__name__}: {err})"
        print(f"  {name:{width}s}  {text}")
    return 0


def _run(args) -> int:
    run_dir = run_experiment(args.name, args.preset, args.seeds, args.overrides, args.out, args.x64,
                             args.chunk_size, sys.stderr, [PROG, *args.argv], args.plugins)
    print(run_dir)
    return 0


def _plot(args) -> int:
    replot(args.dir, sys.stdout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="list experiments")
    ls.set_defaults(func=_list)

    run = sub.add_parser("run", help="run an experiment and write results, manifest and figures")
    run.add_argument("name", help="experiment name (see `list`)")
    run.add_argument("--preset", default="quick", help="preset config (default: quick)")
    run.add_argument("--seeds", type=_positive_int, default=None,
                     help="number of seeds (default: the preset's)")
    run.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                     metavar="FIELD=VALUE", help="override a config field; dotted for nested "
                     "configs (instance.kl_coef=0.1); tuples as 1,2,3")
    run.add_argument("--out", default="results", help="output root; files go to OUT/NAME (default: results)")
    run.add_argument("--chunk-size", type=_positive_int, default=None,
                     help="seeds per chunk (memory, progress and resumption; results do not change)")
    run.add_argument("--x64", action=argparse.BooleanOptionalAction, default=True,
                     help="float64 (default) or float32 with --no-x64; recorded in the manifest")
    run.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="FILE.py|MODULE",
                     help="import this first, for its registrations (e.g. a new exploration strategy); "
                     "repeatable; recorded in the manifest")
    run.set_defaults(func=_run)

    plot = sub.add_parser("plot", help="re-draw figures from results.csv + manifest.json")
    plot.add_argument("dir", help="a run directory OUT/NAME, or OUT to re-plot every run in it")
    plot.set_defaults(func=_plot)

    demo = sub.add_parser("demo", help="build one instance and print its exact values")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for usage errors, which print one line, no traceback)."""
    from experiments.engine.registry import UsageError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except UsageError as err:  # errors inside an experiment's computation keep their traceback
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
