"""Command-line interface: ``python -m experiments`` or the ``rlhf-bandits`` console script.

  list                                   experiment names and one-line descriptions
  run NAME [--preset P] [--seeds N | --seed-range START:STOP] [--set FIELD=VALUE ...] [--out DIR]
           [--chunk-size C] [--no-x64] [--max-memory GB] [--plugin FILE.py|MODULE ...] [--quiet]
           [--sweep FIELD=V1,V2,... ...] [--distributed [--coordinator HOST:PORT --num-processes P --process-id I]]
                                         run, write DIR/NAME/{results.csv,manifest.json,figures}
                                         (a seed range: DIR/NAME-seeds-START-STOP, for merge; distributed:
                                         every process runs a block of seeds, process 0 writes DIR/NAME)
  merge OUT DIR... [--plugin ...] [--trust-plugins] [--quiet]
                                         seed-range runs covering seeds 0..N-1 into OUT/NAME, as one run
  plot DIR [--plugin FILE.py|MODULE ...] [--trust-plugins]
                                         re-draw figures from DIR's results.csv + manifest.json
  show NAME                              every config field: type, default per preset, documentation
  demo                                   one instance and its exact values

A plugin is Python code: importing it runs it with your rights. ``plot`` imports none unless asked.
Progress goes to stderr: on a terminal a bar per computation (seeds done, elapsed time, ETA), in a log or
a pipe one line per chunk with the same times; ``--quiet`` leaves warnings and errors only.

Exit codes: 0 success; 2 bad input (one line naming the field, the value and what is allowed); 3 a file or
directory problem (path, permission, full disk, a corrupt results file); 4 a missing optional dependency;
5 another run holds the output directory; 6 the computation does not fit in memory; 7 the results and figures
were written but the summary could not be computed (the reason is the manifest's ``summary_error``); 8
another process of a ``--distributed`` run failed (its line is printed); 130 interrupted (finished chunks are
kept: the same command resumes).
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence, TextIO

PROG = "rlhf-bandits"
EXIT_USAGE, EXIT_FILES, EXIT_DEPENDENCY, EXIT_BUSY, EXIT_MEMORY, EXIT_SUMMARY, EXIT_INTERRUPTED = 2, 3, 4, 5, 6, 7, 130
EXIT_PEER = 8
MAX_SEED = 2**63 - 1


def _plugin_module_name(path: Path) -> str:
    import hashlib
    return f"rlhf_bandits_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def plugin_digests(specs: Sequence[str]) -> dict[str, str | None]:
    """``{spec: SHA-256 of its source}`` (a file plugin's bytes, an importable module's file; ``None``
    when a module has no source file): part of a run's identity, so an edited plugin is never reused."""
    import importlib.util

    from experiments.engine import storage

    out = {}
    for spec in specs:
        path = Path(spec)
        if not path.is_file():
            found = importlib.util.find_spec(spec)
            path = Path(found.origin) if found is not None and found.origin not in (None, "built-in") else None
        out[spec] = storage.file_digest(path) if path is not None and path.is_file() else None
    return out


def load_plugins(specs: Sequence[str]) -> list[str]:
    """Import each plugin (a ``.py`` file path or an importable module name) for its registrations
    (``algorithms.online.strategies.register``, ``experiments.engine.registry.register``, ...); returns the specs
    as recorded in the manifest (file paths made absolute). A plugin is code: importing it runs it."""
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
                name = _plugin_module_name(path)
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
                   command: Sequence[str] | None = None, plugins: Sequence[str] = (),
                   max_memory: int | None = None, seed_range: tuple[int, int] | None = None,
                   quiet: bool = False, sweep: Sequence[str] = ()) -> Path:
    """Run experiment ``name`` and write ``out/name/`` (results.csv, figures, then manifest.json).

    Configuration errors (unknown name, preset or field, bad value) raise ``ValueError`` before any
    computation. Finished seed chunks are kept until the run completes, so repeating an interrupted
    command resumes it; they are reused only by a run of the same identity (config, seeds, dtype, device
    count, the toolkit's source and each plugin's contents). ``plugins`` are imported first
    (``load_plugins``); ``max_memory`` (bytes) caps each chunk's memory. ``seed_range=(start, stop)``
    computes seeds ``start..stop-1`` only and writes ``out/name-seeds-START-STOP/`` with their rows and
    their saved outputs, for ``merge`` (``experiments.engine.seed_range``). ``sweep`` (``FIELD=V1,V2,...``
    texts) runs the grid of configs as one run (``experiments.engine.sweep``). Progress goes to ``stream``
    (``progress.Display``: a bar on a terminal, lines otherwise, warnings only with ``quiet``). Returns the
    run directory.
    """
    import jax
    import jax.numpy as jnp

    from bandits import validation as v
    from experiments.engine import registry, seed_range as ranges, storage, sweep as sweeps
    from experiments.engine.config import apply_overrides, config_hash, config_to_dict
    from experiments.engine.results import SummaryError, as_results
    from experiments.engine.runner import Progress, check_instance_floor

    plugins = load_plugins(plugins)
    experiment = registry.get(name)
    try:
        config = apply_overrides(registry.preset(experiment, name, preset), overrides)
    except registry.UsageError:
        raise
    except ValueError as err:
        raise registry.UsageError(str(err)) from err
    grid, traced = None, ()
    if sweep:
        if seed_range is not None:
            raise registry.UsageError("--sweep is not allowed with --seed-range: a sweep is one run over all its "
                                      "seeds (sweep each range's field with --set instead).")
        parsed = sweeps.parse_sweeps(sweep, config)
        grid, traced = sweeps.points(config, parsed), sweeps.traced_paths(parsed)
    if seed_range is not None and seeds is not None:
        raise registry.UsageError(f"seeds={seeds} is not allowed with seed_range={seed_range[0]}:{seed_range[1]}: "
                                  "give one of --seeds and --seed-range.")
    if seed_range is not None:
        check_seed_range(seed_range)
        n_seeds = seed_range[1]
    else:
        n_seeds = registry.default_seeds(experiment, preset) if seeds is None else int(seeds)
    if not 1 <= n_seeds <= v.MAX_INT:
        raise registry.UsageError(f"seeds={n_seeds} is not allowed: seeds must be an integer in [1, {v.MAX_INT}].")
    seed = getattr(config, "seed", 0)
    if not (isinstance(seed, int) and 0 <= seed <= MAX_SEED):
        raise registry.UsageError(f"seed={seed!r} is not allowed: seed must be an integer in [0, {MAX_SEED}].")
    run_dir = Path(out) / (name if seed_range is None else f"{name}-seeds-{seed_range[0]}-{seed_range[1]}")
    run_dir.mkdir(parents=True, exist_ok=True)
    with storage.RunLock(run_dir), jax.enable_x64(x64):
        dtype = jnp.dtype(jnp.result_type(float)).name
        # The environment and the code's digest are read once, before running: the manifest must name
        # the code that computed the results, and saved chunks are reused only by the same code and
        # plugins (an edit mid-run is caught at the next resume, not during this run).
        env = storage.environment()
        code = storage.code_digest()
        plugin_sha = plugin_digests(plugins)
        seeds_part = n_seeds if seed_range is None else list(seed_range)
        digest = config_hash(name, config, seeds_part if grid is None else [seeds_part, list(sweep)], dtype, code,
                             plugin_sha, jax.device_count())
        chunks = run_dir / storage.CHUNKS
        store = storage.ChunkStore(chunks / digest)
        progress = Progress(name, stream, store, chunk_size, max_memory, quiet)
        for point_config in [config] if grid is None else [c for _, c in grid]:
            check_instance_floor(point_config, jnp.dtype(dtype).itemsize, progress)
        hook = None
        if seed_range is not None:
            shutil.rmtree(run_dir / ranges.OUTPUTS, ignore_errors=True)   # rewritten by this run
            hook = progress.seed_hook = ranges.RangeHook(*seed_range, seed, run_dir / ranges.OUTPUTS)
        others = [p for p in chunks.iterdir() if p.is_dir() and p.name != digest] if chunks.is_dir() else []
        if others:   # kept for their own resumption
            progress.message(f"found saved chunks of {len(others)} other run(s) (a different config, seeds, dtype, "
                             "device count, code or plugins): not reusing them")
        if store.count():
            progress.message(f"found {store.count()} saved chunk(s) of an interrupted run; resuming")
        which = (f"{n_seeds} seeds" if seed_range is None
                 else f"seeds {seed_range[0]}-{seed_range[1] - 1} ({seed_range[1] - seed_range[0]} of the root stream)")
        procs = (f", {jax.local_device_count()} on this process ({jax.process_index()} of {jax.process_count()})"
                 if jax.process_count() > 1 else "")
        progress.message(f"preset {preset}, {which}, {dtype}, "
                         f"{jax.device_count()} {jax.devices()[0].platform} device(s){procs}")
        started = time.perf_counter()
        if grid is None:
            results = as_results(experiment.run(config, n_seeds, progress))
        else:
            results, swept_columns = sweeps.run_grid(experiment, grid, traced, n_seeds, progress)
        wall = time.perf_counter() - started
        table, extra = results.table, {}
        if grid is not None:
            extra["sweep"] = {"args": list(sweep), "grid": [list(p.overrides) for p, _ in grid],
                              "columns": swept_columns, "traced": list(traced),
                              "traced_calls": progress.traced_calls}
        summary, summary_error = ({}, None) if hook is not None else results.safe_summary()
        if hook is not None:
            if not hook.seed_calls:
                raise ranges.SeedRangeError(
                    f"--seed-range is not supported by {name!r}: its seeds do not run through "
                    "run_vectorized(fn, seed_keys(config.seed, seeds), ...), so every seed was computed; run it "
                    "without --seed-range.")
            table = ranges.keep_rows(table, *seed_range)
            extra = {"seed_range": list(seed_range), "chunk_size": chunk_size,
                     "outputs": dict(sorted(hook.saved.items())),
                     "summary_note": f"a seed range: `{PROG} merge` computes the summary over all seeds"}
        non_finite = check_finite(table, experiment, progress)
        timings = progress.timings()
        manifest = {
            "experiment": name,
            "description": registry.describe(experiment),
            "preset": preset,
            "overrides": list(overrides),
            "plugins": plugins,
            "plugin_sha256": plugin_sha,
            "config_type": f"{type(config).__module__}.{type(config).__qualname__}",
            "config": config_to_dict(config),
            "config_hash": digest,
            "seeds": n_seeds if seed_range is None else seed_range[1] - seed_range[0],
            **extra,
            "dtype": dtype,
            "x64": x64,
            **env,
            "code_sha256": code,
            "compilation_cache": jax.config.jax_compilation_cache_dir,
            "timings": {"compile_s": timings["compile_s"], "run_s": timings["run_s"], "wall_s": wall,
                        "calls": timings["calls"]},
            "resumed_chunks": timings["resumed_chunks"],
            "command": shlex.join(command) if command is not None else None,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "summary": summary,
            **({"summary_error": summary_error} if summary_error else {}),
        }
        plot = ((lambda t, d: experiment.plot(t, config, d)) if grid is None
                else (lambda t, d: sweeps.plot_grid(experiment, grid, swept_columns, t, d)))
        csv_path, figures, plot_error = storage.write_run(run_dir, table, manifest, plot, non_finite)
        store.clear()
        if plot_error is not None:
            progress.message(f"results and manifest written to {run_dir}, but plotting failed; fix it and "
                             f"run `{PROG} plot {run_dir}`")
            raise plot_error
        if summary_error:
            raise SummaryError.after_write(csv_path, len(figures), summary_error)
        if timings["resumed_chunks"]:
            progress.message(f"resumed: reused {timings['resumed_chunks']} saved chunk(s)")
        # compile/run are the vectorized calls' (run_vectorized); an experiment without any (hf-smoke) has wall only
        split = (f" (compile {timings['compile_s']:.1f} s, run {timings['run_s']:.1f} s)" if timings["calls"] else "")
        progress.message(f"wrote {csv_path} ({len(next(iter(table.values())))} rows), manifest.json, "
                         f"{len(figures)} figure file(s) in {wall:.1f} s{split}")
        return run_dir


def check_seed_range(seed_range: tuple[int, int]) -> tuple[int, int]:
    """``(start, stop)`` with ``0 <= start < stop <= MAX_INT`` (seed indices are 32-bit), else a ``UsageError``."""
    from bandits import validation as v
    from experiments.engine.registry import UsageError
    start, stop = seed_range
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= v.MAX_INT):
        raise UsageError(f"seed_range={start}:{stop} is not allowed: need integers 0 <= START < STOP <= {v.MAX_INT}.")
    return start, stop


def check_finite(table, experiment, progress) -> dict[str, int]:
    """Count non-finite values per float column and warn about those outside the experiment's
    ``nan_columns`` (NaN there means "not applicable", e.g. no bound for that algorithm)."""
    import numpy as np
    non_finite = {k: int((~np.isfinite(v)).sum()) for k, v in table.items()
                  if v.dtype.kind == "f" and not np.all(np.isfinite(v))}
    nan_ok = set(getattr(experiment, "nan_columns", ()))
    suspect = {k: int((~np.isfinite(table[k]) & ~(np.isnan(table[k]) & (k in nan_ok))).sum())
               for k in non_finite}
    suspect = {k: c for k, c in suspect.items() if c}
    if suspect:
        progress.warn(f"WARNING: non-finite values in results: {suspect}")
    if set(non_finite) - set(suspect):
        progress.message("NaN marks 'not applicable' in: " + ", ".join(sorted(set(non_finite) - set(suspect))))
    return non_finite


def _recorded_plugins(manifest: dict, run_dir: Path, plugins: Sequence[str], trust: bool) -> list[str]:
    """The plugins ``plot`` may import for a run: none that are already imported in this process, those
    given with ``--plugin``, or (``trust``) the recorded files, found at their recorded path or next to
    the run directory and checked against the recorded SHA-256. Anything else is refused: a manifest
    someone sent you must not run code on your machine unless you say so."""
    from experiments.engine import registry, storage

    recorded = manifest.get("plugins", []) or []
    digests = manifest.get("plugin_sha256", {}) or {}
    given = {str(Path(p).resolve()) if Path(p).is_file() else p for p in plugins}
    todo = []
    for spec in recorded:
        path = Path(spec)
        if path.suffix == ".py" and _plugin_module_name(path) in sys.modules or spec in sys.modules \
                or spec in given or path.name in {Path(g).name for g in given}:
            continue
        if not trust:
            raise registry.UsageError(
                f"{run_dir} was run with plugin {spec!r}: a plugin is code, so plot does not import it by itself; "
                f"pass --plugin FILE (your copy) or --trust-plugins (import the recorded file after checking "
                "its SHA-256).")
        if path.suffix == ".py":
            candidates = [path if path.is_absolute() else run_dir / path, run_dir / path.name]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise registry.UsageError(f"plugin {spec!r} of {run_dir} is not at {candidates[0]} nor at "
                                          f"{candidates[1]}: pass --plugin FILE.")
            want, got = digests.get(spec), storage.file_digest(found)
            if want is None or got != want:
                raise registry.UsageError(f"plugin {found} does not match the SHA-256 recorded for {spec!r} in "
                                          f"{run_dir} ({'none recorded' if want is None else want[:12]}, file "
                                          f"{got[:12]}): pass --plugin FILE if you trust it.")
            todo.append(str(found))
        else:
            todo.append(spec)
    return todo


def replot(path: str | Path, stream: TextIO | None = None, plugins: Sequence[str] = (),
           trust_plugins: bool = False) -> list[Path]:
    """Re-draw the figures of one run directory, or of every run directory inside ``path``. ``plugins``
    are imported first; the run's recorded plugins only with ``trust_plugins`` (``_recorded_plugins``)."""
    from experiments.engine import registry, storage
    from experiments.engine.config import config_from_dict

    load_plugins(plugins)

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
            load_plugins(_recorded_plugins(manifest, run_dir, plugins, trust_plugins))
            experiment = registry.get(manifest["experiment"])
            cls = type(experiment.presets.get(manifest.get("preset"))
                       or next(iter(experiment.presets.values())))
            config = config_from_dict(cls, manifest["config"])
            table = storage.read_results(run_dir)
        except registry.UsageError:
            raise
        except (OSError, KeyError, ValueError) as err:
            raise registry.UsageError(f"cannot re-plot {run_dir}: {err}") from err
        if manifest.get("sweep"):
            from experiments.engine import sweep as sweeps
            grid = sweeps.points(config, sweeps.parse_sweeps(manifest["sweep"]["args"], config))
            columns = manifest["sweep"].get("columns")
            if columns is None:   # sweeps run before 2026-12-04 did not record their columns
                raise registry.UsageError(f"cannot re-plot {run_dir}: its manifest has no sweep.columns (written "
                                          "before they were recorded); run the sweep again.")
            paths = [Path(p) for p in sweeps.plot_grid(experiment, grid, columns, table, run_dir)]
        else:
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


def _int_at_least(low: int):
    """An argparse type: an integer ``>= low``, else one line naming the value."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is not allowed: must be an integer >= {low}")
        return value
    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def _demo(args) -> int:
    from experiments.engine.demo import run_demo
    print(f"rlhf-bandits demo: one instance (seed {args.seed}), exact values in float64")
    for name, val in run_demo(args.seed).items():
        print(f"  {name:28s} {val: .6f}")
    return 0


def show_text(name: str) -> str:
    """The text of ``rlhf-bandits show NAME``: the experiment's description, each ``--set`` field with its
    dotted path, type, default per preset and one line of documentation, and what its table holds."""
    import re
    import textwrap

    from experiments.engine import registry
    from experiments.engine.config import describe_fields

    experiment = registry.get(name)
    presets = experiment.presets
    lines = [f"{name}: {registry.describe(experiment)}", "",
             f"fields (--set NAME=VALUE; presets: {', '.join(presets)}; seeds: "
             + ", ".join(f"{p} {registry.default_seeds(experiment, p)}" for p in presets) + ")"]
    for row in describe_fields(presets):
        values = list(row["defaults"].values())
        default = (repr(values[0]) if all(v == values[0] for v in values)
                   else ", ".join(f"{p}: {v!r}" for p, v in row["defaults"].items()))
        label = row["name"] if row["name"] == row["path"] else f"{row['name']} ({row['path']})"
        lines.append(f"  {label}: {row['type']}; default {default}")
        if row["doc"]:
            lines.extend(textwrap.wrap(row["doc"], 100, initial_indent="      ", subsequent_indent="      "))
    doc = getattr(experiment, "__doc__", "") or ""
    columns = re.search(r"Columns?:(.*?)(?:\n\s*\n|$)", doc, re.S)
    if columns:
        lines += ["", "results.csv columns:"]
        lines.extend(textwrap.wrap(" ".join(columns.group(1).split()), 100, initial_indent="  ",
                                   subsequent_indent="  "))
    nan = getattr(experiment, "nan_columns", ())
    if nan:
        lines.append(f"  NaN means 'not applicable' in: {', '.join(nan)}")
    return "\n".join(lines)


def _show(args) -> int:
    print(show_text(args.name))
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
    from experiments.engine import compile_cache
    from experiments.engine.registry import UsageError

    if args.distributed:
        return _run_distributed(args)
    if args.coordinator is not None or args.num_processes is not None or args.process_id is not None:
        raise UsageError("--coordinator, --num-processes and --process-id are options of --distributed.")
    compile_cache.enable()
    max_memory = None if args.max_memory is None else int(args.max_memory * 1e9)
    run_dir = run_experiment(args.name, args.preset, args.seeds, args.overrides, args.out, args.x64,
                             args.chunk_size, sys.stderr, [PROG, *args.argv], args.plugins, max_memory,
                             args.seed_range, args.quiet, args.sweeps)
    print(run_dir)
    return 0


def _run_distributed(args) -> int:
    """``run --distributed``: this process's block of seeds, merged by process 0 (``engine.distributed``)."""
    from experiments.engine import compile_cache, distributed, registry
    from experiments.engine.merge import merge_runs
    from experiments.engine.registry import UsageError

    if args.seed_range is not None:
        raise UsageError("--seed-range is not allowed with --distributed: the processes split the seeds "
                         "themselves (give --seeds N).")
    if args.sweeps:
        raise UsageError("--sweep is not allowed with --distributed yet: run one --distributed run per value "
                         "(--set FIELD=V).")
    me, count = distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    compile_cache.enable()
    load_plugins(args.plugins)
    experiment = registry.get(args.name)
    n_seeds = registry.default_seeds(experiment, args.preset) if args.seeds is None else args.seeds
    chunk = args.chunk_size or getattr(experiment, "CHUNK_SIZE", None)
    max_memory = None if args.max_memory is None else int(args.max_memory * 1e9)
    command = [PROG, *args.argv]
    quiet = args.quiet or me != 0   # one progress display: process 0's
    about = {"distributed": {"processes": count, "blocks": distributed.blocks(n_seeds, count, chunk),
                             "chunk_size": chunk}}

    def run_block(seed_range, root):
        return run_experiment(args.name, args.preset, None, args.overrides, root, args.x64, args.chunk_size,
                              sys.stderr, command, args.plugins, max_memory, seed_range, quiet)

    def merge(out, dirs):
        return merge_runs(out, dirs, sys.stderr, args.plugins, False, command, quiet, extra=about)

    run_dir = distributed.run_distributed(args.name, n_seeds, args.out, chunk, run_block, merge)
    if run_dir is not None:
        print(run_dir)
    return 0


def _merge(args) -> int:
    from experiments.engine import compile_cache
    from experiments.engine.merge import merge_runs

    compile_cache.enable()   # a call the merge computes again (module docstring of seed_range) compiles once
    print(merge_runs(args.out, args.dirs, sys.stderr, args.plugins, args.trust_plugins, [PROG, *args.argv],
                     args.quiet))
    return 0


def _plot(args) -> int:
    replot(args.dir, sys.stdout, args.plugins, args.trust_plugins)
    return 0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{value} is not allowed: must be a finite number > 0")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: must be an integer in [0, {MAX_SEED}]")
    return value


def _seed_range(text: str) -> tuple[int, int]:
    from bandits.validation import MAX_INT
    allowed = f"must be START:STOP with integers 0 <= START < STOP <= {MAX_INT}"
    parts = text.split(":")
    try:
        start, stop = (int(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        start = stop = None
    if start is None or not 0 <= start < stop <= MAX_INT:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: {allowed}")
    return start, stop


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): ``PROG CMD: error: ... (see PROG CMD --help)``."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ls = sub.add_parser("list", help="list experiments")
    ls.set_defaults(func=_list)

    run = sub.add_parser("run", help="run an experiment and write results, manifest and figures")
    run.add_argument("name", help="experiment name (see `list`)")
    run.add_argument("--preset", default="quick", help="preset config (default: quick)")
    count = run.add_mutually_exclusive_group()
    count.add_argument("--seeds", type=_positive_int, default=None,
                       help="number of seeds (default: the preset's)")
    count.add_argument("--seed-range", type=_seed_range, default=None, metavar="START:STOP",
                       help="compute seeds START..STOP-1 of the root stream only (job arrays, preemptible machines); "
                       "writes OUT/NAME-seeds-START-STOP with their rows and outputs; `merge` joins the ranges")
    run.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                     metavar="FIELD=VALUE", help="override a config field, e.g. kl_coef=0.1 (a nested config's "
                     "field by its own name when unique, else dotted: instance.kl_coef=0.1); tuples as 1,2,3")
    run.add_argument("--out", default="results", help="output root; files go to OUT/NAME (default: results)")
    run.add_argument("--chunk-size", type=_positive_int, default=None,
                     help="seeds per chunk (memory, progress and resumption; default: all seeds in one chunk, "
                     "or on CPU chunks of about 64 MB when one chunk would peak above 1 GB); results agree to the "
                     "last few bits, not bit for bit, across chunk sizes and device counts (XLA vectorizes "
                     "differently)")
    run.add_argument("--max-memory", type=_positive_float, default=None, metavar="GB",
                     help="the memory this run may use (default: what the host, its cgroup or the devices have "
                     "free): on CPU the whole process's, so each compiled chunk must fit beside what the process "
                     "already holds; on accelerators each chunk's device memory; a chunk that does not fit runs "
                     "as smaller chunks")
    run.add_argument("--x64", action=argparse.BooleanOptionalAction, default=True,
                     help="float64 (default) or float32 with --no-x64; recorded in the manifest")
    run.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="FILE.py|MODULE",
                     help="import this first, for its registrations (e.g. a new exploration strategy); a "
                     "plugin is Python code and runs with your rights; repeatable; recorded in the manifest "
                     "with its SHA-256")
    run.add_argument("--sweep", dest="sweeps", action="append", default=[], metavar="FIELD=V1,V2,...",
                     help="run the grid of these values (repeatable: the product) as one run: the fields become "
                          "columns of results.csv, figures go to one folder per point, and float fields share one "
                          "compiled program across the grid (e.g. --sweep kl_coef=0.05,0.1,0.2)")
    run.add_argument("--distributed", action="store_true",
                     help="one run over many processes or hosts (jax.distributed): every process runs this same "
                          "command and computes a block of the seeds, process 0 merges them into OUT/NAME; "
                          "under SLURM or Open MPI JAX finds the processes itself, else give the three options below")
    run.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                     help="with --distributed: the address of process 0's coordinator")
    run.add_argument("--num-processes", type=_positive_int, default=None, metavar="P",
                     help="with --distributed: how many processes take part")
    run.add_argument("--process-id", type=_non_negative_int, default=None, metavar="I",
                     help="with --distributed: this process's index, 0 <= I < P")
    run.add_argument("--quiet", action="store_true",
                     help="no progress on stderr (warnings and errors only); without it: a bar with elapsed time "
                     "and ETA on a terminal, one line per chunk otherwise")
    run.set_defaults(func=_run)

    plot = sub.add_parser("plot", help="re-draw figures from results.csv + manifest.json")
    plot.add_argument("dir", help="a run directory OUT/NAME, or OUT to re-plot every run in it")
    plot.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="FILE.py|MODULE",
                      help="import this plugin first (a run made with plugins needs them to be re-drawn)")
    plot.add_argument("--trust-plugins", action="store_true",
                      help="import the plugins the run recorded (paths resolved against the run directory, "
                      "contents checked against the recorded SHA-256); a plugin is code: only for runs you trust")
    plot.set_defaults(func=_plot)

    merge = sub.add_parser("merge", help="merge seed-range runs (run --seed-range) into one run")
    merge.add_argument("out", metavar="OUT", help="output root; the merged run goes to OUT/NAME")
    merge.add_argument("dirs", nargs="+", metavar="DIR", help="run directories of `run --seed-range` covering "
                       "seeds 0..N-1 once, of one experiment, config, code and dtype")
    merge.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="FILE.py|MODULE",
                       help="import this plugin first (runs made with plugins need them)")
    merge.add_argument("--trust-plugins", action="store_true",
                       help="import the plugins the runs recorded (checked against the recorded SHA-256)")
    merge.add_argument("--quiet", action="store_true", help="no progress on stderr (warnings and errors only)")
    merge.set_defaults(func=_merge)

    show = sub.add_parser("show", help="every config field of an experiment: type, defaults, documentation")
    show.add_argument("name", help="experiment name (see `list`)")
    show.set_defaults(func=_show)

    demo = sub.add_parser("demo", help="build one instance and print its exact values")
    demo.add_argument("--seed", type=_seed, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (module docstring). A user-facing failure prints one line and
    no traceback; an error inside an experiment's computation (a bug) keeps its traceback."""
    from bandits.validation import MissingDependencyError
    from experiments.engine.registry import UsageError
    from experiments.engine.distributed import DistributedError
    from experiments.engine.results import SummaryError
    from experiments.engine.runner import MemoryLimitError
    from experiments.engine.storage import RunBusyError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:   # --help, or a malformed command line (one line, exit 2)
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    args.argv = argv

    def fail(code: int, text: str) -> int:
        print(f"{PROG} {args.command}: error: {text}", file=sys.stderr)
        return code

    try:
        return args.func(args)
    except UsageError as err:
        return fail(EXIT_USAGE, str(err))
    except MissingDependencyError as err:
        return fail(EXIT_DEPENDENCY, str(err))
    except RunBusyError as err:
        return fail(EXIT_BUSY, str(err))
    except SummaryError as err:
        return fail(EXIT_SUMMARY, str(err))
    except DistributedError as err:
        return fail(EXIT_PEER, f"another process failed: {err}")
    except MemoryLimitError as err:
        return fail(EXIT_MEMORY, f"{err}: lower the sizes of the config (--set ...) or --chunk-size, or raise "
                    "--max-memory if more memory is free than the devices report")
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        return fail(EXIT_FILES, f"{err.strerror or err}{where}")
    except KeyboardInterrupt:
        return fail(EXIT_INTERRUPTED, "interrupted; finished chunks are kept: run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())
