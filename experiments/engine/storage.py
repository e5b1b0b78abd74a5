"""Result files: ``DIR/NAME/results.csv`` (tidy), ``manifest.json``, figures, and resumable chunks.

Every file is written atomically (a temporary file in the same directory, fsync, ``os.replace``), so
an interrupted run leaves either the previous file or the complete new one, never half of one. The
manifest records the SHA-256 of ``results.csv``; ``read_results`` refuses a CSV that does not match
(a run killed between writing the CSV and the manifest). Finished seed chunks are kept in
``DIR/NAME/.chunks/<run-identity>/<tag>/chunk_<i>.npz`` until the run completes (one sub-directory per
``run_vectorized`` call of the run); the run identity covers the config, the code (``code_digest``), the
plugins' contents (``file_digest``), dtype and device count, so a chunk is reused only by the same
computation. An unreadable chunk is recomputed and named. Files follow the umask; ``RunLock`` keeps two
runs from writing one directory at once.
"""
from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import importlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np

__all__ = ["ChunkStore", "RunBusyError", "RunLock", "atomic_write", "code_digest", "column_types", "environment",
           "file_digest", "git_revision", "read_manifest", "read_results", "write_manifest", "write_results",
           "write_run"]

RESULTS = "results.csv"
MANIFEST = "manifest.json"
CHUNKS = ".chunks"
LOCK = ".lock"
PACKAGES = ("bandits", "algorithms", "experiments")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = False) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": "",
                                                                            "encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp creates 0600; a results file follows the umask
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data), binary=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def _kind(array: np.ndarray) -> str:
    if array.dtype == bool:
        return "bool"
    if np.issubdtype(array.dtype, np.integer):
        return "int"
    if np.issubdtype(array.dtype, np.floating):
        return "float"
    if array.dtype.kind in "US":
        return "str"
    raise TypeError(f"column of dtype {array.dtype} cannot be stored; use int, float, bool or str.")


def column_types(table: Mapping[str, np.ndarray]) -> dict[str, str]:
    """``{column: "int" | "float" | "bool" | "str"}`` (stored in the manifest to read the CSV back)."""
    return {k: _kind(np.asarray(v)) for k, v in table.items()}


def _cell(kind: str, value: Any) -> str:
    if kind == "float":
        return repr(float(value))  # shortest round-trip text; nan/inf survive
    if kind == "int":
        return str(int(value))
    if kind == "bool":
        return "True" if value else "False"
    return str(value)


def csv_text(table: Mapping[str, np.ndarray]) -> str:
    kinds = column_types(table)
    cols = [np.asarray(v) for v in table.values()]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(table))
    for row in zip(*cols):
        w.writerow([_cell(k, v) for k, v in zip(kinds.values(), row)])
    return buf.getvalue()


def write_results(out_dir: str | os.PathLike, table: Mapping[str, np.ndarray]) -> tuple[Path, str]:
    """Write ``out_dir/results.csv`` atomically; returns the path and its SHA-256."""
    text = csv_text(table)
    path = atomic_write_text(Path(out_dir) / RESULTS, text)
    return path, hashlib.sha256(text.encode("utf-8")).hexdigest()


def _parse_column(values: list[str], kind: str | None) -> np.ndarray:
    if kind == "int":
        return np.array([int(v) for v in values], dtype=np.int64)
    if kind == "float":
        return np.array([float(v) for v in values], dtype=np.float64)
    if kind == "bool":
        return np.array([v == "True" for v in values], dtype=bool)
    if kind == "str":
        return np.array(values, dtype=str)
    for guess in ("int", "float"):
        try:
            return _parse_column(values, guess)
        except ValueError:
            pass
    if values and set(values) <= {"True", "False"}:
        return _parse_column(values, "bool")
    return np.array(values, dtype=str)


def _locate(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    csv_path = path / RESULTS if path.is_dir() else path
    return csv_path, csv_path.parent / MANIFEST


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a run directory (or of the directory holding a ``results.csv``)."""
    manifest = _locate(path)[1]
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest} does not exist: not a finished run directory.")
    return json.loads(manifest.read_text(encoding="utf-8"))


def read_results(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The table of a run directory or ``results.csv`` (types from the manifest when present)."""
    csv_path, manifest_path = _locate(path)
    if not csv_path.exists():
        raise FileNotFoundError(f"{csv_path} does not exist.")
    data = csv_path.read_bytes()
    kinds: dict[str, str] = {}
    if manifest_path.exists():
        info = json.loads(manifest_path.read_text(encoding="utf-8")).get("results", {})
        kinds = info.get("columns", {})
        digest = info.get("sha256")
        if digest and hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"{csv_path} does not match {manifest_path} (SHA-256 differs): the run "
                             "that wrote it did not finish; run it again.")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    if not rows:
        raise ValueError(f"{csv_path} is empty.")
    header, body = rows[0], rows[1:]
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ValueError(f"{csv_path} is malformed: line {i} has {len(row)} cells, its header {len(header)}.")
    columns = list(zip(*body)) if body else [() for _ in header]
    return {name: _parse_column(list(col), kinds.get(name)) for name, col in zip(header, columns)}


def write_manifest(out_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Write ``out_dir/manifest.json`` atomically."""
    text = json.dumps(manifest, indent=2, sort_keys=False, default=_json_default) + "\n"
    return atomic_write_text(Path(out_dir) / MANIFEST, text)


def write_run(run_dir: str | os.PathLike, table: Mapping[str, np.ndarray], manifest: dict[str, Any],
              plot: Callable[[Mapping[str, np.ndarray], Path], Any], non_finite: Mapping[str, int]
              ) -> tuple[Path, list[str], BaseException | None]:
    """Write a finished run: ``results.csv``, the figures (``plot(table, run_dir)``), then ``manifest.json``
    (``manifest`` plus ``results`` and ``figures``), each atomically. A plotting error does not lose the
    results: it is recorded in the manifest and returned (``rlhf-bandits plot DIR`` retries)."""
    run_dir = Path(run_dir)
    csv_path, digest = write_results(run_dir, table)
    plot_error = None
    try:
        figures = [str(Path(p).relative_to(run_dir)) if Path(p).is_relative_to(run_dir) else str(p)
                   for p in (plot(table, run_dir) or [])]
    except Exception as err:
        figures, plot_error = [], err
    manifest = {**manifest,
                "results": {"file": RESULTS, "rows": len(next(iter(table.values()))),
                            "columns": column_types(table), "sha256": digest, "non_finite": dict(non_finite)},
                "figures": figures,
                "plot_error": None if plot_error is None else f"{type(plot_error).__name__}: {plot_error}"}
    write_manifest(run_dir, manifest)
    return csv_path, figures, plot_error


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_revision(path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """``{"revision", "dirty"}`` of the git checkout holding ``path`` (this package), or ``None``."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10)
        if rev.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"revision": rev.stdout.strip(),
            "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_digest() -> str:
    """SHA-256 over the source of the toolkit's packages (relative path and bytes of every ``.py`` file):
    the code that computes the numbers, committed or not."""
    digest = hashlib.sha256()
    for name in PACKAGES:
        root = Path(importlib.import_module(name).__file__).resolve().parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode())
            digest.update(b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class RunBusyError(RuntimeError):
    """Another process holds the lock of a run directory."""


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``DIR/.lock`` for the duration of a run (released when the
    process ends, even when it is killed)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self._fd)
            self._fd = None
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunBusyError(f"another run is writing {self.path.parent} (it holds {self.path}); wait for it "
                                   "to finish or give another --out.") from None
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def environment() -> dict[str, Any]:
    """Versions, devices and git revision for the manifest."""
    devices = jax.devices()
    return {
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     "jaxlib": _version("jaxlib"), "numpy": np.__version__, "optax": _version("optax"),
                     "scipy": _version("scipy"), "matplotlib": _version("matplotlib"),
                     "rlhf-bandits": _version("rlhf-bandits")},
        "devices": {"count": len(devices), "platform": devices[0].platform,
                    "kinds": sorted({d.device_kind for d in devices}),
                    "process_count": jax.process_count()},
        "host": {"platform": platform.platform(), "executable": sys.executable},
        "git": git_revision(),
    }


class ChunkStore:
    """Finished seed chunks of one run configuration, saved atomically as ``.npz`` files.

    ``rejected`` lists ``(path, reason)`` of saved chunks that could not be read (recomputed instead)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.rejected: list[tuple[Path, str]] = []

    def _path(self, tag: str, index: int) -> Path:
        return self.root / tag / f"chunk_{index}.npz"

    def save(self, tag: str, index: int, start: int, stop: int, tree: Any) -> Path:
        leaves = jax.tree.leaves(tree)
        arrays = {f"leaf_{j}": np.asarray(x) for j, x in enumerate(leaves)}
        arrays["seed_range"] = np.array([start, stop], dtype=np.int64)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return atomic_write_bytes(self._path(tag, index), buf.getvalue())

    def load(self, tag: str, index: int, start: int, stop: int, like: Any) -> Any | None:
        """The saved chunk if it exists and matches seeds ``start..stop-1`` and the structure of
        ``like`` (leaves with a leading batch axis); otherwise ``None`` (the chunk is recomputed)."""
        path = self._path(tag, index)
        if not path.exists():
            return None
        leaves, treedef = jax.tree.flatten(like)
        try:
            with np.load(path) as data:
                if list(data["seed_range"]) != [start, stop]:
                    return self._reject(path, f"it holds seeds {list(data['seed_range'])}, not [{start}, {stop}]")
                out = [data[f"leaf_{j}"] for j in range(len(leaves))]
                if len(data.files) != len(leaves) + 1:
                    return self._reject(path, "its arrays do not match this computation's outputs")
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
            return self._reject(path, f"{type(err).__name__}: {err}")
        for got, want in zip(out, leaves):
            if got.shape != (stop - start,) + tuple(want.shape[1:]) or got.dtype != want.dtype:
                return self._reject(path, "its arrays do not match this computation's outputs")
        return jax.tree.unflatten(treedef, out)

    def _reject(self, path: Path, reason: str) -> None:
        self.rejected.append((path, reason))
        return None

    def count(self) -> int:
        return len(list(self.root.glob("*/chunk_*.npz"))) if self.root.exists() else 0

    def clear(self) -> None:
        """Remove this configuration's chunks (and ``.chunks`` itself when nothing else is left)."""
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            self.root.parent.rmdir()
        except OSError:
            pass
