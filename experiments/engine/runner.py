"""The vectorized runner: one per-seed pure function, ``vmap``ped, jitted and sharded over devices.

``run_vectorized(fn, keys, *args)`` returns ``vmap(fn, in_axes=(0, None, ...))(keys, *args)`` as NumPy
arrays. The seed axis is sharded over all local devices (``NamedSharding`` over a 1-D ``("seeds",)``
mesh), so the same call uses 1 CPU, N CPU devices (``JAX_NUM_CPU_DEVICES=N``) or several GPUs. Seeds
can be processed in chunks of ``chunk_size`` (bounded memory, progress, resumption); each chunk is
padded to a multiple of the device count and the padding is dropped. Compiled executables are kept
(a small LRU) for functions identified by value (``functools.partial`` with hashable arguments).

``seed_keys(root, n)[i]`` is ``fold_in(key(root), i)``, so seed ``i`` gets the same key whatever
``n``, the chunking, the device count, or a disjoint range ``seed_keys(root, n, start)`` computed by
another process.

Memory: after compiling a chunk the runner reads XLA's estimate of the program's peak memory and compares
it with what the devices have free (``available_memory``: the host's ``MemAvailable`` and any cgroup limit on
CPU), capped by ``Progress(max_memory=...)``, the CLI's ``--max-memory`` (on CPU a cap on the whole process:
what it already holds is taken off). A chunk that does not fit is made smaller (halving towards one seed per device)
and recompiled; when even that does not fit, ``MemoryLimitError`` says how much one chunk needs. A
different chunk size can change results in their last bits (XLA vectorizes the batch differently), so
the size used is recorded with each call's timings.

Working set on CPU: when no chunk size was asked for and a CPU chunk of all the seeds peaks above
``CPU_RECHUNK_BYTES`` (XLA's estimate), the runner recompiles for chunks of about ``CPU_CHUNK_BYTES``
(``cpu_chunk_seeds``). The loops inside the per-seed programs (Newton, Adam, rounds) then stream arrays that
stay near the caches instead of main memory: offline-rate's paper program (9.5 MB a seed) ran 0.29 s a seed
in one chunk of 1024 and 0.16 s in chunks of 8 (``benchmarks/RESULTS.md``, "Chunks that fit the caches").
Below the threshold the second compile would cost more than it saves, so the chunk stays whole.

Seed ranges: a ``Progress.seed_hook`` sees every call first; ``seed_range.RangeHook`` computes only a
range of the run's seeds (``--seed-range``) and ``seed_range.ReplayHook`` answers calls from saved
outputs (``merge``).
"""
from __future__ import annotations

import collections
import functools
import hashlib
import math
import os
import time
from typing import Any, Callable, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from experiments.engine.progress import Display, clock

__all__ = ["MemoryLimitError", "Progress", "available_memory", "resident_memory", "run_vectorized", "seed_keys"]

AXIS = "seeds"
_CACHE_SIZE = 16
_compiled: collections.OrderedDict = collections.OrderedDict()


def seed_keys(root_seed: int, n: int, start: int = 0) -> jax.Array:
    """Typed PRNG keys of seeds ``start .. start + n - 1``: key ``i`` is ``fold_in(key(root_seed), i)``."""
    if n < 0 or start < 0:
        raise ValueError(f"seed_keys needs n >= 0 and start >= 0, got n={n}, start={start}.")
    root = jax.random.key(root_seed)
    index = jnp.arange(start, start + n, dtype=jnp.uint32)  # uint32: same keys with or without x64
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(root, index)


class MemoryLimitError(MemoryError):
    """A compiled chunk needs more memory than the devices have free, even at one seed per device."""


def instance_floor(config: Any, itemsize: int) -> tuple[int, str] | None:
    """``(bytes, what)``: the least one seed of ``config`` holds, its instance's tables ``phi [n_x, K, d]``, the
    reward and ``log pi0 [n_x, K]`` (``(d + 2) n_x K`` numbers); ``None`` without an ``instance`` field.

    Checked before compiling (``check_instance_floor``), so that a size no device can hold is refused at once,
    with the fields that drive it, instead of after compiling (XLA's estimate, ``_run_vectorized``)."""
    inst = getattr(config, "instance", None)
    sizes = [getattr(inst, f, None) for f in ("n_contexts", "n_actions", "dim")]
    if not all(isinstance(n, int) for n in sizes):
        return None
    n_x, k, d = sizes
    what = f"n_contexts x n_actions x (dim + 2) = {n_x} x {k} x {d + 2}"
    return (d + 2) * n_x * k * itemsize, what


def check_instance_floor(config: Any, itemsize: int, progress: "Progress") -> None:
    """``MemoryLimitError`` naming the fields when ``instance_floor`` exceeds the memory budget of one device."""
    floor = instance_floor(config, itemsize)
    budget = progress.memory_budget(jax.local_devices()[:1])
    if floor is not None and budget is not None and floor[0] > budget:
        raise MemoryLimitError(f"one seed's instance tables alone ({floor[1]} numbers of {itemsize} bytes) need "
                               f"{floor[0] / 1e9:.3g} GB, but {budget / 1e9:.3g} GB are free")


def available_memory(devices: list) -> int | None:
    """Bytes free for one program on ``devices``: the smallest free device memory for accelerators
    (``memory_stats``), the host's ``MemAvailable`` (and its cgroup limit) for CPU devices; ``None`` when
    unknown. CPU devices share the host's memory, so the host's figure is the budget of the whole chunk."""
    stats = [d.memory_stats() for d in devices] if devices and devices[0].platform != "cpu" else []
    if stats and all(s and "bytes_limit" in s for s in stats):
        return min(s["bytes_limit"] - s.get("bytes_in_use", 0) for s in stats) * len(devices)
    free = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    free.extend(_cgroup_free())
    return min(free) if free else None


def _cgroup_free(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> list[int]:
    """``limit - usage`` of each memory cgroup that limits this process: cgroup v2 (``memory.max``) and v1
    (``memory.limit_in_bytes`` of the process's cgroup and its ancestors, as ``/proc/self/cgroup`` names them);
    a container often has one of them and not ``MemAvailable``'s figure."""
    def inactive_file(folder: str, key: str) -> int:   # page cache the kernel reclaims before it kills
        try:
            stat = dict(line.split() for line in open(f"{folder}/memory.stat"))
            return int(stat.get(key, 0))
        except (OSError, ValueError):
            return 0

    out = []
    try:
        limit = open(f"{root}/memory.max").read().strip()
        if limit != "max":
            used = int(open(f"{root}/memory.current").read())
            out.append(int(limit) - used + inactive_file(root, "inactive_file"))
    except (OSError, ValueError):
        pass
    try:
        lines = open(proc).read().splitlines()
    except OSError:
        return out
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" not in controllers.split(","):
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            folder = "/".join([f"{root}/memory", *parts[:depth]])
            try:
                limit = int(open(f"{folder}/memory.limit_in_bytes").read())
                usage = int(open(f"{folder}/memory.usage_in_bytes").read())
            except (OSError, ValueError):
                continue
            if limit < 1 << 60:   # "no limit" reads as about 2**63
                out.append(limit - usage + inactive_file(folder, "total_inactive_file"))
    return out


def resident_memory() -> int:
    """Bytes this process holds in memory now (its resident set, ``/proc/self/statm``); 0 where unknown."""
    try:
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Progress:
    """Run context handed to ``experiment.run`` and on to ``run_vectorized``.

    Reports each chunk on ``stream`` (silent when ``None`` or ``quiet``; a bar with elapsed time and ETA
    when ``stream`` is a terminal or ``bars`` is true, else one line per chunk: ``progress.Display``),
    records per-call timings (``calls``, ``timings()``) and, with a ``store`` (``storage.ChunkStore``),
    saves finished chunks and reuses them when an interrupted run is repeated. ``chunk_size`` (e.g. from
    ``--chunk-size``) takes precedence over the experiment's own choice: it changes memory use, never the
    results.
    """

    def __init__(self, name: str = "", stream: TextIO | None = None, store: Any = None,
                 chunk_size: int | None = None, max_memory: int | None = None, quiet: bool = False,
                 bars: bool | None = None):
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} is not allowed: chunk_size must be >= 1.")
        if max_memory is not None and max_memory < 1:
            raise ValueError(f"max_memory={max_memory} is not allowed: max_memory must be a number of bytes >= 1.")
        self.name, self.stream, self.store, self.chunk_size = name, stream, store, chunk_size
        self.max_memory = max_memory
        self.display = Display(stream, quiet, bars)
        self.calls: list[dict[str, Any]] = []
        # ``seed_range.RangeHook`` / ``ReplayHook``: sees every call first (``--seed-range``, ``merge``)
        self.seed_hook: Callable | None = None
        # ``sweep.Traced``: the float fields of the grid point running (``--sweep``), and which calls shared a program
        self.traced: Any = None
        self.traced_calls: list[dict[str, Any]] = []

    def memory_budget(self, devices: list) -> int | None:
        """Bytes one chunk may use: the devices' free memory, capped by ``max_memory``. On CPU devices the
        cap is the whole process's (``--max-memory``: the memory a user gives the run), so what the process
        already holds (``resident_memory``: interpreter, JAX, compiled programs, earlier results) is taken off
        it; on accelerators it caps the chunk's device memory."""
        free = available_memory(devices)
        if self.max_memory is None:
            return free
        cap = self.max_memory
        if not devices or devices[0].platform == "cpu":
            cap = max(0, cap - resident_memory())
        return cap if free is None else min(free, cap)

    def message(self, text: str) -> None:
        """Print one progress line (experiments may announce their phases); silent with ``quiet``."""
        self.display.line((f"[{self.name}] " if self.name else "") + text)

    def warn(self, text: str) -> None:
        """Print a warning, even with ``quiet``."""
        self.display.warn((f"[{self.name}] " if self.name else "") + text)

    def timings(self) -> dict[str, Any]:
        """Totals and per-call details for the manifest (seconds)."""
        return {"compile_s": sum(c["compile_s"] for c in self.calls),
                "run_s": sum(c["run_s"] for c in self.calls),
                "resumed_chunks": sum(c["resumed_chunks"] for c in self.calls),
                "calls": [dict(c) for c in self.calls]}


def _padded(keys: jax.Array, size: int) -> jax.Array:
    pad = size - keys.shape[0]
    if pad == 0:
        return keys
    return jnp.concatenate([keys, jnp.broadcast_to(keys[-1:], (pad,) + keys.shape[1:])])


def _run_chunk(compiled: Callable, keys: jax.Array, args: tuple) -> Any:
    """Execute one chunk and wait for it (a separate function so tests can count executions)."""
    return jax.block_until_ready(compiled(keys, *args))


def _cache_key(fn: Callable, keys: jax.Array, args: tuple, size: int, devices: list) -> Any:
    """Hashable identity of a compiled chunk, or ``None`` (lambdas/closures are never reused).

    A ``functools.partial`` with hashable arguments (e.g. a frozen dataclass config) is identified
    by its function and arguments, so a repeated run in one process reuses the executable.
    """
    ident: Any = fn
    if isinstance(fn, functools.partial):
        ident = (fn.func, fn.args, tuple(sorted(fn.keywords.items())))
    leaves, treedef = jax.tree.flatten(args)
    avals = tuple((np.shape(x), jnp.result_type(x), getattr(x, "weak_type", False)) for x in leaves)
    flags = (jax.config.jax_enable_x64, jax.config.jax_numpy_rank_promotion,
             jax.config.jax_default_matmul_precision)
    key = (ident, treedef, avals, keys.dtype, keys.shape[1:], size, tuple(d.id for d in devices), flags)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _chunk_tag(tag: str, fn: Callable, args: tuple) -> str:
    """``tag`` plus a digest of the call's shared arguments (values, dtypes, shapes) and, for a
    ``functools.partial``, its bound arguments: two calls of one run that share a tag but differ in what
    they compute never share saved chunks (the run's identity covers config, code and plugins)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(args):
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        a = np.asarray(leaf)
        digest.update(f"{a.dtype}{a.shape}".encode() + a.tobytes())
    if isinstance(fn, functools.partial):
        digest.update(repr((fn.func.__module__, fn.func.__qualname__, fn.args, sorted(fn.keywords.items()))).encode())
    return f"{tag}-{digest.hexdigest()[:12]}"


def _peak_bytes(compiled) -> int | None:
    """XLA's estimate of a compiled program's peak memory (arguments, outputs and temporaries)."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if stats is None:
        return None
    # The CPU backend reports a peak that leaves out temporaries (256 bytes for a 4 MB program, jaxlib 0.10.2):
    # take the larger of the peak and arguments + outputs + temporaries.
    total = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
    return int(max(getattr(stats, "peak_memory_in_bytes", 0) or 0, total))


# Measured on the 2-core development machine (issue 15): the fastest chunks peaked at 20-130 MB (offline-rate
# quick and paper, online-explore); a whole chunk above 1 GB is where a second compile paid for itself.
CPU_CHUNK_BYTES = 64 * 2**20
CPU_RECHUNK_BYTES = 2**30


def cpu_chunk_seeds(estimate: int, size: int, n_devices: int) -> int:
    """Seeds per chunk whose estimated peak is nearest ``CPU_CHUNK_BYTES``: ``estimate / size`` bytes a seed,
    rounded to the nearest power of two and to a multiple of ``n_devices``, at least ``n_devices``, at most ``size``."""
    per_seed = max(estimate / max(size, 1), 1.0)
    seeds = 2 ** round(math.log2(max(CPU_CHUNK_BYTES / per_seed, 1.0)))
    seeds = max(n_devices, seeds // n_devices * n_devices)
    return min(seeds, size)


# XLA:CPU's estimate leaves out what its runtime allocates while the program runs: offline-rate quick at
# 2500 x 2500, one seed, grew the process by 3.33 GB over its resident set after compiling (1.04 GB; peak 4.37 GB)
# against an estimate of 2.50 GB (1.33x), measured inside a 6 GB memory cgroup (issue 14).
CPU_ESTIMATE_FACTOR = 1.5


def _expected_bytes(estimate: int | None, devices: list) -> tuple[int | None, str]:
    """The bytes a chunk is expected to take, and how that figure was made: XLA's estimate, times
    ``CPU_ESTIMATE_FACTOR`` on CPU devices."""
    if estimate is None or not devices or devices[0].platform != "cpu":
        return estimate, "XLA's estimate"
    return int(estimate * CPU_ESTIMATE_FACTOR), (f"XLA's estimate {estimate / 1e9:.3g} GB x {CPU_ESTIMATE_FACTOR} "
                                                 "on CPU")


def _check_outputs(shapes: Any) -> None:
    for leaf in jax.tree.leaves(shapes):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            raise TypeError("run_vectorized: fn returned PRNG keys; return jax.random.key_data(key) instead.")


def run_vectorized(fn: Callable[..., Any], keys: jax.Array, *args: Any, chunk_size: int | None = None,
                   progress: Progress | None = None, tag: str | None = None,
                   devices: list | None = None) -> Any:
    """``vmap(fn)(keys, *args)`` jitted, seed axis sharded over ``devices``, as NumPy arrays.

    ``fn(key, *args)`` handles one seed; ``args`` are shared by every seed and passed as traced,
    replicated arrays (so new values do not recompile; put static choices in a closure). Chunks of
    ``chunk_size`` seeds (``progress.chunk_size`` wins if set; default: all seeds at once) run one
    after the other through one compiled executable. ``tag`` names this call's chunks in the store
    (default ``call<i>``, the call's position within the run). ``devices`` defaults to all of this
    process's devices (several processes: give each a disjoint ``seed_keys(root, n, start)`` range).
    Timings go to ``progress.calls``: ``compile_s`` (tracing, lowering and compilation, zero when a
    compiled executable is reused) and ``run_s`` (execution until ready, summed over chunks).
    Pass ``functools.partial(one_seed, config=config)`` rather than a lambda to reuse the compiled
    executable when the same configuration runs again in this process.
    """
    from experiments.engine.sweep import traced_call

    progress = progress if progress is not None else Progress()
    tag = tag or f"call{len(progress.calls)}"
    fn, args, shared = traced_call(fn, keys, args, progress.traced)
    if progress.traced is not None:
        progress.traced_calls.append({"tag": tag, "shared": shared})
    store_tag = _chunk_tag(tag, fn, args)
    if progress.seed_hook is not None:
        batched = jax.vmap(fn, in_axes=(0,) + (None,) * len(args))
        return progress.seed_hook(
            lambda some, offset=0: _run_vectorized(fn, some, args, chunk_size, progress, tag, store_tag, devices,
                                                   offset),
            keys, tag, store_tag, lambda: jax.eval_shape(batched, keys[:1], *args))
    return _run_vectorized(fn, keys, args, chunk_size, progress, tag, store_tag, devices)


def _run_vectorized(fn: Callable, keys: jax.Array, args: tuple, chunk_size: int | None, progress: Progress,
                    tag: str, store_tag: str, devices: list | None, offset: int = 0) -> Any:
    """The body of ``run_vectorized``; ``offset`` is the index of ``keys[0]`` in the run (a seed range), for
    the progress lines only."""
    devices = list(devices) if devices is not None else jax.local_devices()
    n = int(keys.shape[0])
    if n < 1:
        raise ValueError("run_vectorized needs at least one key.")
    size = min(progress.chunk_size or chunk_size or n, n)
    size = math.ceil(size / len(devices)) * len(devices)
    rechunk = not (progress.chunk_size or chunk_size) and all(d.platform == "cpu" for d in devices)
    n_chunks = math.ceil(n / size)

    mesh = jax.make_mesh((len(devices),), (AXIS,), axis_types=(AxisType.Auto,), devices=devices)
    seeds_sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    replicated = NamedSharding(mesh, PartitionSpec())
    batched = jax.vmap(fn, in_axes=(0,) + (None,) * len(args))
    args = jax.device_put(args, replicated)
    cache_key = _cache_key(fn, keys, args, size, devices)
    cache_key = None if cache_key is None else (*cache_key, rechunk)   # an asked-for size is never re-chunked
    cached = _compiled.get(cache_key) if cache_key is not None else None
    budget = progress.memory_budget(devices)
    if cached is not None and budget is not None and cached[3] is not None and cached[3] > budget:
        cached = None   # compiled for more memory than this call may use
    record = {"tag": tag, "seeds": n, "chunk_size": size, "chunks": n_chunks, "devices": len(devices),
              "compile_s": 0.0, "run_s": 0.0, "resumed_chunks": 0, "reused_executable": cached is not None,
              "peak_memory_bytes": None}
    progress.calls.append(record)
    if cached is not None:
        _compiled.move_to_end(cache_key)
        compiled, shapes, size, _, record["peak_memory_bytes"] = cached
    else:
        t0 = time.perf_counter()
        progress.message(f"{tag}: compiling the per-seed program for {size} seeds on {len(devices)} device(s) "
                         "(XLA, once per shape; the first chunk waits for it)")
        jitted = jax.jit(batched, in_shardings=(seeds_sharding,) + (replicated,) * len(args),
                         out_shardings=seeds_sharding)
        while True:
            first = jax.device_put(_padded(keys[:size], size), seeds_sharding)
            shapes = jax.eval_shape(batched, first, *args)
            _check_outputs(shapes)
            compiled = jitted.lower(first, *args).compile()
            estimate = _peak_bytes(compiled)
            need, said = _expected_bytes(estimate, devices)
            if rechunk and estimate is not None and estimate > CPU_RECHUNK_BYTES:
                rechunk, fitted = False, cpu_chunk_seeds(estimate, size, len(devices))
                if fitted < size:
                    progress.message(f"{tag}: a chunk of {size} seeds peaks at {estimate / 1e9:.3g} GB; on CPU "
                                     f"chunks of {fitted} seeds run faster (--chunk-size overrides); recompiling")
                    size = fitted
                    continue
            # again after compiling: the process now also holds the executable and the compiler's leftovers
            budget = progress.memory_budget(devices)
            if budget is None or need is None or need <= budget or size == len(devices):
                break
            smaller = max(len(devices), (size // 2) // len(devices) * len(devices))
            progress.message(f"{tag}: a chunk of {size} seeds needs {need / 1e9:.3g} GB ({said}), "
                             f"{budget / 1e9:.3g} GB free; trying {smaller} seeds per chunk")
            size = smaller
        if budget is not None and need is not None and need > budget:
            raise MemoryLimitError(f"{tag}: one chunk of {size} seed(s) needs {need / 1e9:.3g} GB ({said}) "
                                   f"but {budget / 1e9:.3g} GB are free")
        record["compile_s"] = time.perf_counter() - t0
        record["peak_memory_bytes"] = estimate
        progress.message(f"{tag}: compiled for {size} seeds on {len(devices)} device(s) "
                         f"in {record['compile_s']:.2f} s")
        if cache_key is not None:
            _compiled[cache_key] = (compiled, shapes, size, need, estimate)
            while len(_compiled) > _CACHE_SIZE:
                _compiled.popitem(last=False)
    n_chunks = math.ceil(n / size)
    record["chunk_size"], record["chunks"] = size, n_chunks
    parts = []
    started, computed, done = time.perf_counter(), 0, 0
    bars = progress.display.bars
    with progress.display.bar(n, f"[{progress.name}] {tag}" if progress.name else tag) as advance:
        for i in range(n_chunks):
            start, stop = i * size, min((i + 1) * size, n)
            where = (f"{tag}: chunk {i + 1}/{n_chunks} (seeds {offset + start}-{offset + stop - 1} of "
                     + (f"{n})" if not offset else f"the range {offset}-{offset + n - 1})"))
            saved = progress.store.load(store_tag, i, start, stop, shapes) if progress.store is not None else None
            if saved is None and progress.store is not None and progress.store.rejected:
                path, reason = progress.store.rejected.pop()
                progress.message(f"{where}: saved chunk {path} is unusable ({reason}); recomputing it")
            done += stop - start
            if saved is not None:
                parts.append(saved)
                record["resumed_chunks"] += 1
                progress.message(f"{where} reused from an interrupted run")
                advance(stop - start)
                continue
            chunk = jax.device_put(_padded(keys[start:stop], size), seeds_sharding)
            t0 = time.perf_counter()
            out = _run_chunk(compiled, chunk, args)
            seconds = time.perf_counter() - t0
            record["run_s"] += seconds
            computed += stop - start
            out = jax.tree.map(lambda a: np.asarray(a)[: stop - start], out)
            if progress.store is not None:
                progress.store.save(store_tag, i, start, stop, out)
            parts.append(out)
            advance(stop - start)
            if not bars:   # a log: the bar's elapsed time and ETA on each chunk's line
                elapsed = time.perf_counter() - started
                eta = f", ETA {clock(elapsed / computed * (n - done))}" if done < n else ""
                progress.message(f"{where} done in {seconds:.2f} s ({clock(elapsed)} elapsed{eta})")
    if len(parts) == 1:
        return parts[0]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
