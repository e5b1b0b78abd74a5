"""``rlhf-bandits run NAME --distributed``: one run over many processes and hosts, on JAX's own runtime.

Every process runs the same command. ``initialize`` calls ``jax.distributed.initialize`` (which detects
SLURM, Open MPI and the other clusters JAX knows by itself, or takes ``--coordinator HOST:PORT
--num-processes P --process-id I``); CPU processes talk through JAX's Gloo collectives. The ``N`` seeds
of the root stream are then cut into ``P`` contiguous blocks (``blocks``), process ``i`` computing block
``i`` on its own devices as a seed-range run (``experiments.engine.seed_range``) under
``OUT/.NAME-distributed/`` (there it resumes after an interruption, like any run). The blocks' files
(``results.csv``, ``manifest.json`` and the saved per-seed outputs) travel to process 0 through
``multihost_utils.process_allgather`` (no shared file system needed), and process 0 merges them into
``OUT/NAME`` with ``rlhf-bandits merge``'s code: the table a single run writes, the summary recomputed
over all seeds. The other processes write nothing under ``OUT/NAME``.

Bit for bit: a block's boundaries are multiples of the chunk size ``C`` (``--chunk-size``, else the
experiment's ``CHUNK_SIZE`` when it has one), so ``results.csv`` equals ``run --chunk-size C`` over one
process (``seed_range``'s condition); a process whose block is empty only takes part in the exchange.
A process that fails sends its error instead of its block: every process then stops with that line.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from experiments.engine.registry import UsageError

__all__ = ["DistributedError", "blocks", "exchange", "initialize", "run_distributed"]

STAGING = ".{name}-distributed"
_ERROR = "error.txt"


class DistributedError(RuntimeError):
    """Another process of a distributed run failed (its message is this one's)."""


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> tuple[int, int]:
    """``jax.distributed.initialize`` with Gloo collectives on CPU; ``(process_id, process_count)``. Without
    arguments JAX detects the cluster (SLURM, Open MPI, ...); an environment it cannot read is a usage error."""
    import jax

    given = [coordinator is None, num_processes is None, process_id is None]
    if any(given) and not all(given):
        raise UsageError("--coordinator, --num-processes and --process-id go together: give all three, or none "
                         "to let JAX detect the cluster (SLURM, Open MPI).")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise UsageError(f"process_id={process_id} is not allowed: need 0 <= process_id < num_processes = "
                         f"{num_processes}.")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except (ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"--distributed could not start JAX's distributed runtime: {first} (give --coordinator "
                         "HOST:PORT --num-processes P --process-id I, or run under SLURM / Open MPI).") from None
    return jax.process_index(), jax.process_count()


def blocks(n_seeds: int, n_processes: int, chunk_size: int | None) -> list[tuple[int, int]]:
    """``P`` contiguous ``(start, stop)`` blocks covering ``0..n_seeds-1`` (some possibly empty), inner
    boundaries multiples of ``chunk_size`` (module docstring): as equal as that allows."""
    unit = chunk_size or 1
    per = math.ceil(math.ceil(n_seeds / unit) / n_processes) * unit
    return [(min(i * per, n_seeds), min((i + 1) * per, n_seeds)) for i in range(n_processes)]


def _pack(run_dir: Path) -> bytes:
    """The files ``merge`` reads from a seed-range run: results.csv, manifest.json and ``outputs/``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for path in sorted(run_dir.rglob("*")):
            rel = path.relative_to(run_dir)
            if path.is_file() and (rel.parts[0] == "outputs" or rel.name in ("results.csv", "manifest.json")):
                z.write(path, rel.as_posix())
    return buf.getvalue()


def _error(message: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(_ERROR, message)
    return buf.getvalue()


@contextlib.contextmanager
def _stdout_to_stderr():
    """Gloo announces its connections on the C++ stdout, where a run prints its directory: send it to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def exchange(blob: bytes) -> list[bytes]:
    """Every process's ``blob``, in process order, on every process (``process_allgather`` of bytes)."""
    with _stdout_to_stderr():
        return _exchange(blob)


def _exchange(blob: bytes) -> list[bytes]:
    from jax.experimental import multihost_utils

    if len(blob) >= 2**31:
        raise UsageError(f"a block's files are {len(blob)} bytes: more than the 2 GiB one exchange carries; "
                         "run the blocks with --seed-range and merge them instead.")
    lengths = np.asarray(multihost_utils.process_allgather(np.asarray([len(blob)], np.int32))).reshape(-1)
    width = max(int(lengths.max()), 1)
    padded = np.zeros(width, np.uint8)
    padded[:len(blob)] = np.frombuffer(blob, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), width)
    return [rows[i, :int(n)].tobytes() for i, n in enumerate(lengths)]


def run_distributed(name: str, n_seeds: int, out: str | Path, chunk_size: int | None,
                    run_block: Callable[[tuple[int, int], Path], Path],
                    merge: Callable[[Path, list[Path]], Path], stream: Any = None) -> Path | None:
    """Process ``i`` runs its block with ``run_block(seed_range, staging_root)`` (returns its run directory);
    process 0 merges all blocks into ``out/NAME`` with ``merge(out, dirs)`` and returns it, the others
    return ``None`` (module docstring)."""
    import jax

    me, count = jax.process_index(), jax.process_count()
    mine = blocks(n_seeds, count, chunk_size)[me]
    staging = Path(out) / STAGING.format(name=name)
    blob = b""
    try:
        if mine[1] > mine[0]:
            blob = _pack(run_block(mine, staging))
    except Exception as err:   # sent to every process, which all stop with it (module docstring)
        blob = _error(f"process {me}: {err}")
        failure: BaseException | None = err
    else:
        failure = None
    parts = exchange(blob)
    _raise_first(failure, parts)
    result, status = None, b""
    if me == 0:
        try:
            with tempfile.TemporaryDirectory(prefix=f"{name}-blocks-") as tmp:
                dirs = []
                for (start, stop), part in zip(blocks(n_seeds, count, chunk_size), parts):
                    if part:
                        d = Path(tmp) / f"{name}-seeds-{start}-{stop}"
                        with zipfile.ZipFile(io.BytesIO(part)) as z:
                            z.extractall(d)
                        dirs.append(d)
                result = merge(Path(out), dirs)
        except Exception as err:
            status, failure = _error(f"process 0 (merging the blocks): {err}"), err
    _raise_first(failure, exchange(status))
    if mine[1] > mine[0]:   # this process's block, now merged
        shutil.rmtree(staging / f"{name}-seeds-{mine[0]}-{mine[1]}", ignore_errors=True)
        try:
            staging.rmdir()
        except OSError:
            pass   # another process's block is still there (a shared file system) or it is gone already
    return result


def _raise_first(failure: BaseException | None, parts: list[bytes]) -> None:
    """Re-raise this process's own error, else stop with the first error another process sent."""
    if failure is not None:
        raise failure
    for part in parts:
        if part:
            with zipfile.ZipFile(io.BytesIO(part)) as z:
                if _ERROR in z.namelist():
                    raise DistributedError(z.read(_ERROR).decode())
