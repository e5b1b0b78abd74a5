"""``rlhf-bandits merge OUT DIR...``: seed-range runs into the one run they are the parts of.

Each ``DIR`` is a run of ``rlhf-bandits run NAME --seed-range START:STOP`` (``experiments.engine.seed_range``).
The runs must share experiment, config, source digest and git revision, plugins (their SHA-256) and
dtype, and their ranges must cover ``0..N-1`` exactly once (an overlap or a gap is refused, naming the
seeds and the directories). The merge then calls the experiment's own ``run`` for ``N`` seeds with every
``run_vectorized`` call answered from the ranges' saved outputs (nothing is compiled or executed), so the
merged ``OUT/NAME/results.csv`` is the table a single run over ``N`` seeds writes, rows in the same
order, and the summary is recomputed from all seeds by the same code. A call over a batch derived from
the seeds' outputs is computed again here, with the ranges' ``--chunk-size``. Files are written like a
run's (``storage.write_run``: atomically, under the run directory's lock).

Wall-clock columns (``WALL_CLOCK_COLUMNS``: ``seconds``, one round's wall-clock measured on seed 0 in
active-vs-random, deployment-regret, omd-vs-mle, lm-omd-features, hf-smoke and lm-iterative-dpo's HF
path) and the summary's timing entries are not seed outputs: the experiment's timing code runs again
during the merge, so they measure the merging machine (the manifest says so under ``wall_clock``).
Every other column equals a single run's bit for bit when the ranges ran with the single run's chunk
size and their boundaries are multiples of it (``seed_range``); the merged manifest records each range's
chunk sizes.
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import platform
import shlex
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

__all__ = ["IDENTITY", "WALL_CLOCK_COLUMNS", "merge_runs"]

WALL_CLOCK_COLUMNS = ("seconds",)
# manifest fields the runs must share (dotted: nested), with the words used when they differ
IDENTITY = (("experiment", "experiment"), ("config_type", "config type"), ("config", "config"),
            ("code_sha256", "source digest"), ("git.revision", "git revision"), ("plugin_sha256", "plugins"),
            ("dtype", "dtype"), ("x64", "x64"))


def _get(manifest: dict, dotted: str) -> Any:
    node: Any = manifest
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    """The dotted path of the first field where two JSON values differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return f"{path or 'value'}={a!r} vs {b!r}"


def _read(run_dir: Path) -> dict:
    from experiments.engine import storage
    from experiments.engine.registry import UsageError
    if not run_dir.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such run directory", str(run_dir))
    try:
        manifest = storage.read_manifest(run_dir)
    except FileNotFoundError:
        raise UsageError(f"{run_dir} holds no {storage.MANIFEST}: not a finished run (a run writes it last; "
                         "run the range again).") from None
    except ValueError as err:
        raise UsageError(f"{run_dir / storage.MANIFEST} is unreadable: {err}") from err
    if not isinstance(manifest.get("seed_range"), list):
        raise UsageError(f"{run_dir} is not a seed-range run (`run --seed-range START:STOP`): it kept no per-seed "
                         "outputs to merge.")
    return manifest


def _check(dirs: list[Path], manifests: list[dict]) -> list[tuple[Path, int, int]]:
    """The ranges in seed order, after checking identity and coverage of ``0..N-1`` (``UsageError``)."""
    from experiments.engine import storage
    from experiments.engine.registry import UsageError
    first, ref = dirs[0], manifests[0]
    for d, m in zip(dirs[1:], manifests[1:]):
        for field, words in IDENTITY:
            if _get(ref, field) != _get(m, field):
                detail = (_first_difference(_get(ref, field), _get(m, field))
                          if field == "config" else f"{_get(ref, field)!r} vs {_get(m, field)!r}")
                raise UsageError(f"{d} and {first} differ in {words} ({detail}): merge needs runs of one "
                                 "experiment, config, code and dtype.")
    parts = sorted((tuple(m["seed_range"]), d) for d, m in zip(dirs, manifests))
    covered, previous = 0, None
    for (start, stop), d in parts:
        if start < covered:
            raise UsageError(f"seeds {start}-{min(stop, covered) - 1} are in both {previous} and {d}: the ranges "
                             "overlap; merge each seed once.")
        if start > covered:
            raise UsageError(f"seeds {covered}-{start - 1} are in none of the runs (a gap before {d}): run "
                             f"--seed-range {covered}:{start} and merge it too.")
        covered, previous = stop, d
    for d, m in zip(dirs, manifests):
        for name, digest in (m.get("outputs") or {}).items():
            path = d / "outputs" / name
            if not path.is_file() or storage.file_digest(path) != digest:
                raise UsageError(f"{path} is {'missing' if not path.is_file() else 'not the file its run saved'} "
                                 "(SHA-256 differs): run that range again.")
    return [(d, start, stop) for (start, stop), d in parts]


def merge_runs(out: str | os.PathLike, dirs: Sequence[str | os.PathLike], stream: TextIO | None = None,
               plugins: Sequence[str] = (), trust_plugins: bool = False,
               command: Sequence[str] | None = None, quiet: bool = False, extra: dict | None = None) -> Path:
    """Merge seed-range run directories into ``out/NAME`` (module docstring); returns that directory.
    ``extra``: more manifest fields (a distributed run's processes and blocks)."""
    import jax
    import jax.numpy as jnp

    from experiments.engine import cli, registry, storage
    from experiments.engine.config import config_from_dict, config_hash, config_to_dict
    from experiments.engine.results import SummaryError, as_results
    from experiments.engine.runner import Progress
    from experiments.engine.seed_range import ReplayHook

    dirs = [Path(d) for d in dirs]
    manifests = [_read(d) for d in dirs]
    parts = _check(dirs, manifests)
    ref = manifests[0]
    name, n_seeds = ref["experiment"], parts[-1][2]
    code = storage.code_digest()
    if code != ref["code_sha256"]:
        raise registry.UsageError(f"the runs were computed by source digest {ref['code_sha256'][:12]}, this checkout "
                                  f"is {code[:12]}: merge re-runs the experiment's own code over the saved outputs, "
                                  "so run it from the checkout that computed them.")
    run_dir = Path(out) / name
    if any(run_dir.resolve() == d.resolve() for d in dirs):
        raise registry.UsageError(f"out={str(out)!r} is not allowed: {run_dir} is one of the runs to merge.")
    cli.load_plugins(plugins)
    cli.load_plugins(cli._recorded_plugins(ref, dirs[0], plugins, trust_plugins))
    experiment = registry.get(name)
    cls = type(experiment.presets.get(ref.get("preset")) or next(iter(experiment.presets.values())))
    config = config_from_dict(cls, ref["config"])
    if json.loads(json.dumps(config_to_dict(config), default=repr)) != ref["config"]:
        raise registry.UsageError(f"the config recorded in {dirs[0]} does not read back into {cls.__qualname__}.")
    run_dir.mkdir(parents=True, exist_ok=True)
    with storage.RunLock(run_dir), jax.enable_x64(bool(ref["x64"])):
        dtype = jnp.dtype(jnp.result_type(float)).name
        # a call the merge computes again uses the ranges' --chunk-size, so it matches them (and a single run
        # with that flag) bit for bit
        flags = {m.get("chunk_size") for m in manifests}
        progress = Progress(name, stream, chunk_size=flags.pop() if len(flags) == 1 else None, quiet=quiet)
        progress.seed_hook = ReplayHook(parts, getattr(config, "seed", 0), n_seeds, progress)
        progress.message(f"merging {len(parts)} seed ranges into {n_seeds} seeds: " +
                         ", ".join(f"{a}-{b - 1}" for _, a, b in parts))
        started = time.perf_counter()
        results = as_results(experiment.run(config, n_seeds, progress))
        wall = time.perf_counter() - started
        if dtype != ref["dtype"]:
            raise registry.UsageError(f"dtype={dtype} here but the runs used {ref['dtype']}.")
        table = results.table
        summary, summary_error = results.safe_summary()
        non_finite = cli.check_finite(table, experiment, progress)
        times = [m.get("timings", {}) for m in manifests]
        clock = [c for c in WALL_CLOCK_COLUMNS if c in table]
        keep = {k: v for k, v in ref.items() if k not in ("seed_range", "chunk_size", "outputs", "summary_note",
                                                          "summary", "results", "figures", "plot_error")}
        manifest = {
            **keep,
            "config_hash": config_hash(name, config, n_seeds, dtype, ref["code_sha256"], ref.get("plugin_sha256"),
                                       (ref.get("devices") or {}).get("count")),
            "seeds": n_seeds,
            "timings": {"compile_s": sum(t.get("compile_s", 0.0) for t in times),
                        "run_s": sum(t.get("run_s", 0.0) for t in times),
                        "wall_s": sum(t.get("wall_s", 0.0) for t in times), "merge_s": wall,
                        "calls": [dict(c, seed_range=m["seed_range"]) for m in manifests
                                  for c in m.get("timings", {}).get("calls", [])]},
            "resumed_chunks": sum(m.get("resumed_chunks", 0) for m in manifests),
            "merged_from": [{"dir": str(d), "seed_range": [a, b], "config_hash": m.get("config_hash"),
                             "created": m.get("created"), "command": m.get("command"), "host": m.get("host"),
                             "devices": m.get("devices"), "git": m.get("git"),
                             "chunk_sizes": [c.get("chunk_size") for c in m.get("timings", {}).get("calls", [])]}
                            for (d, a, b), m in zip(parts, [manifests[dirs.index(d)] for d, _, _ in parts])],
            "wall_clock": {"columns": clock, "measured_by": "the merge (the experiment's timing code re-ran on "
                           f"{platform.node() or platform.platform()})"},
            "command": shlex.join(command) if command is not None else None,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "summary": summary,
            **({"summary_error": summary_error} if summary_error else {}),
            **(extra or {}),
        }
        csv_path, figures, plot_error = storage.write_run(
            run_dir, table, manifest, lambda t, d: experiment.plot(t, config, d), non_finite)
        if plot_error is not None:
            progress.message(f"results and manifest written to {run_dir}, but plotting failed; fix it and "
                             f"run `{cli.PROG} plot {run_dir}`")
            raise plot_error
        if summary_error:
            raise SummaryError.after_write(csv_path, len(figures), summary_error)
        progress.message(f"wrote {csv_path} ({len(next(iter(table.values())))} rows, {n_seeds} seeds), "
                         f"manifest.json, {len(figures)} figure file(s) in {wall:.1f} s")
        return run_dir
