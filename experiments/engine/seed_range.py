"""Seed ranges: compute only seeds ``START..STOP-1`` of a run's root stream, keep their outputs, replay them.

Seed ``i`` of a run is ``fold_in(key(config.seed), i)`` (``runner.seed_keys``): its key, and so its
numbers, depend on the index alone, never on how many seeds the run has or how they are split. A range
run (``rlhf-bandits run NAME --seed-range START:STOP``) therefore calls the experiment's own ``run`` for
``STOP`` seeds with a ``RangeHook`` on its ``Progress``: every ``run_vectorized`` call over the run's seed
keys (``seed_keys(config.seed, STOP)``) computes only ``keys[START:STOP]``, saves those outputs in
``DIR/outputs/`` and hands the experiment copies of seed ``START``'s outputs for seeds ``0..START-1``
(placeholders, so its post-processing sees well-formed arrays); the CLI then keeps only the table rows of
seeds ``START..STOP-1``. Other calls (e.g. one seed's timing run) are computed whole and saved as well.

``rlhf-bandits merge`` runs the experiment's ``run`` once more, for all ``N`` seeds, with a ``ReplayHook``:
each seed call returns the saved outputs of the ranges, in seed order, without compiling or executing
anything, so the merged table, its row order and its summary come from the same code as a single run.
A whole call is reused when its batch is the one the range saw (same SHA-256, e.g. a calibration over
its own seeds) and computed again otherwise (a batch derived from the seeds' outputs, such as
lm-kl-estimators' second call, which a range run also computes over seeds ``0..STOP-1``).

Bit for bit: a chunk's numbers can change in their last bits with the chunk size (XLA vectorizes the
batch differently), so ranges reproduce ``run --chunk-size C`` exactly when they ran with chunk size ``C``
(a range runs ``min(C, STOP - START)`` seeds per chunk; ``C`` defaults to the experiment's own) and
every range boundary is a multiple of ``C``; otherwise they agree to the last bits.

Host memory grows with ``STOP`` (the experiment builds its arrays and table over seeds ``0..STOP-1``); the
device work covers the range only.
"""
from __future__ import annotations

import functools
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from experiments.engine.registry import UsageError

__all__ = ["OUTPUTS", "RangeHook", "ReplayHook", "SeedRangeError", "keep_rows", "output_name"]

OUTPUTS = "outputs"


class SeedRangeError(UsageError):
    """The experiment or the saved outputs do not support a seed range or its replay (a usage error)."""


def output_name(index: int, store_tag: str) -> str:
    """File of call ``index`` (its position in the run) with ``store_tag`` (its tag and arguments' digest)."""
    return f"call{index:03d}-{store_tag}.npz"


@functools.lru_cache(maxsize=4)
def _seed_key_data(root_seed: int, n: int) -> np.ndarray:
    from experiments.engine.runner import seed_keys
    return np.asarray(jax.random.key_data(seed_keys(root_seed, n)))


def _is_seed_call(keys: jax.Array, root_seed: int, n: int) -> bool:
    """Whether a call's batch is the run's seed keys ``seed_keys(root_seed, n)``, in order."""
    if keys.ndim != 1 or keys.shape[0] != n or not jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        return False
    return bool(np.array_equal(np.asarray(jax.random.key_data(keys)), _seed_key_data(root_seed, n)))


def _input_digest(keys: Any) -> str:
    """SHA-256 of a call's batch (key data for PRNG keys): a saved whole call is reused only for the same batch."""
    if jax.dtypes.issubdtype(getattr(keys, "dtype", None), jax.dtypes.prng_key):
        keys = jax.random.key_data(keys)
    a = np.asarray(keys)
    return hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes()).hexdigest()


def _save(path: Path, tree: Any, kind: str, start: int, stop: int, batch: str = "") -> str:
    from experiments.engine import storage
    arrays = {f"leaf_{j}": np.asarray(x) for j, x in enumerate(jax.tree.leaves(tree))}
    arrays["kind"], arrays["seed_range"] = np.array(kind), np.array([start, stop], dtype=np.int64)
    arrays["batch_sha256"] = np.array(batch)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    storage.atomic_write_bytes(path, buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


class RangeHook:
    """``Progress.seed_hook`` of a range run: seeds ``start..stop-1`` of ``seed_keys(root_seed, stop)``.

    ``saved`` maps each output file (under ``directory``) to its SHA-256; ``seed_calls`` counts the calls
    that were restricted to the range (none means the experiment's seeds do not go through
    ``run_vectorized``: the range cannot be honoured)."""

    def __init__(self, start: int, stop: int, root_seed: int, directory: Path):
        if not 0 <= start < stop:
            raise ValueError(f"seed range {start}:{stop} is not allowed: need 0 <= START < STOP.")
        self.start, self.stop, self.root_seed, self.directory = start, stop, root_seed, Path(directory)
        self.saved: dict[str, str] = {}
        self.seed_calls = 0
        self._index = 0

    def __call__(self, compute: Callable, keys: jax.Array, tag: str, store_tag: str, shapes: Callable) -> Any:
        name, self._index = output_name(self._index, store_tag), self._index + 1
        if not _is_seed_call(keys, self.root_seed, self.stop):
            out = compute(keys)
            self.saved[name] = _save(self.directory / name, out, "whole", 0, int(keys.shape[0]), _input_digest(keys))
            return out
        self.seed_calls += 1
        part = compute(keys[self.start:self.stop], self.start)
        self.saved[name] = _save(self.directory / name, part, "seeds", self.start, self.stop)
        return jax.tree.map(lambda a: np.concatenate([np.broadcast_to(a[:1], (self.start,) + a.shape[1:]), a]),
                            part)


class ReplayHook:
    """``Progress.seed_hook`` of ``merge``: every call returns the ranges' saved outputs, nothing runs.

    ``parts`` are ``(run_dir, start, stop)`` covering ``0..n-1`` in order; a seed call concatenates their
    outputs, any other call returns the first range's (all ranges computed it alike)."""

    def __init__(self, parts: list[tuple[Path, int, int]], root_seed: int, n: int, progress: Any):
        self.parts, self.root_seed, self.n, self.progress = parts, root_seed, n, progress
        self._index = 0

    def _load(self, run_dir: Path, name: str, like: Any, kind: str, count: int, batch: str = "") -> Any:
        path = Path(run_dir) / OUTPUTS / name
        leaves, treedef = jax.tree.flatten(like)
        try:
            with np.load(path) as data:
                got_kind = str(data["kind"])
                if kind == "whole" and (got_kind != kind or str(data["batch_sha256"]) != batch):
                    return None    # another batch (e.g. derived from the seeds' outputs): the caller recomputes
                out = [data[f"leaf_{j}"] for j in range(len(leaves))]
                extra = len(data.files) != len(leaves) + 3
        except FileNotFoundError:
            raise SeedRangeError(f"{path} does not exist: {run_dir} did not save this call of the experiment "
                                 "(a different config, code or seed count); run the range again.") from None
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise SeedRangeError(f"{path} is unreadable ({type(err).__name__}: {err}); run the range again.") from err
        bad = extra or got_kind != kind or any(
            g.dtype != w.dtype or g.shape[1:] != tuple(w.shape[1:]) or g.shape[0] != count
            for g, w in zip(out, leaves))
        if bad:
            raise SeedRangeError(f"{path} does not match this computation's outputs; run the range again.")
        return jax.tree.unflatten(treedef, out)

    def __call__(self, compute: Callable, keys: jax.Array, tag: str, store_tag: str, shapes: Callable) -> Any:
        name, self._index = output_name(self._index, store_tag), self._index + 1
        like, n = shapes(), int(keys.shape[0])
        record = {"tag": tag, "seeds": n, "replayed": True, "compile_s": 0.0, "run_s": 0.0, "resumed_chunks": 0}
        if not _is_seed_call(keys, self.root_seed, self.n):
            try:
                out = self._load(self.parts[0][0], name, like, "whole", n, _input_digest(keys))
            except SeedRangeError:
                out = None
            if out is None:   # not saved for this batch: computed here, as a single run would
                return compute(keys)
            self.progress.calls.append(record)
            return out
        self.progress.calls.append(record)
        pieces = [self._load(d, name, like, "seeds", stop - start) for d, start, stop in self.parts]
        return jax.tree.map(lambda *xs: np.concatenate(xs), *pieces)


def keep_rows(table: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """The rows of seeds ``start..stop-1`` (the table's ``seed`` column holds the seed index)."""
    if "seed" not in table or np.asarray(table["seed"]).dtype.kind not in "iu":
        raise SeedRangeError("--seed-range needs a results table with an integer 'seed' column; this "
                             "experiment's has none.")
    seed = np.asarray(table["seed"])
    keep = (seed >= start) & (seed < stop)
    return {k: np.asarray(v)[keep] for k, v in table.items()}
