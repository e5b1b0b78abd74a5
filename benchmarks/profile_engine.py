"""Where the engine's time goes (issue 15, item 1): XLA's per-op timings, attributed to our source lines.

One steady-state call of a workload is traced with ``jax.profiler`` while XLA's CPU runtime records an
event per executed HLO op (``--xla_cpu_enable_xprof_traceme=true``). ``xprof`` converts the trace; each
op's self time (its duration minus the ops nested in it on the same thread) is attributed to the
innermost stack frame of the op's metadata that lies in this repository outside ``benchmarks/`` (the
compiled HLO text carries the stack-frame tables), so the report reads "``bandits/data.py:65
search_cdf``: 36%".

Workloads (the benchmarks' own per-seed functions, at their sizes unless changed by flags):
  offline  ``offline_mle_gibbs.ours_per_seed``: MLE-Gibbs sweep, 9 sizes up to 16384 comparisons;
  online   ``online_loop``'s ours: ``online_common.per_seed`` with the ``optimism`` strategy, online-explore
           paper sizes (hard setting) by default;
  pessimism  P2's policy-level pessimistic solve (``algorithms.nash.pessimism``) at nash-intransitive's paper
           shape, skew strength 8 (``--seeds 2`` is enough);
  offline-rate  offline-rate's per-seed program at its paper preset (all five learners, 9 sizes), canonical
           setting;
  nash-kl-sweep  nash-kl-sweep's per-seed program at its paper preset, the first kl_coef only (``--iterations``
           shortens the online methods' rounds).

Usage (repository root; needs ``pip install xprof``, which the toolkit itself does not)::

  PYTHONPATH=. python benchmarks/profile_engine.py offline --seeds 128 --out /tmp/prof_offline
  PYTHONPATH=. python benchmarks/profile_engine.py online --seeds 256 --out /tmp/prof_online

Output: the top source lines and the top HLO ops, on stdout and in ``OUT/profile.json``. Self times are
summed over the runtime's threads, so their total can exceed the wall time when ops run concurrently;
fractions are of that total. The traced call is not the timed one (tracing adds overhead): the wall
time printed is of an untraced call just before it.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import glob
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAG = "--xla_cpu_enable_xprof_traceme=true"


def stack_tables(hlo_text: str) -> tuple[dict, dict]:
    """``(op name -> stack_frame_id, frame id -> (file, line, function, parent id))`` from HLO text."""
    ops = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?stack_frame_id=(\d+)", hlo_text, re.M):
        ops[m.group(1)] = int(m.group(2))
    sections = {}
    for name in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
        m = re.search(rf"^{name}\n((?:\d+ .*\n)+)", hlo_text, re.M)
        sections[name] = {int(line.split(" ", 1)[0]): line.split(" ", 1)[1] for line in m.group(1).splitlines()} if m else {}
    files = {k: v.strip('"') for k, v in sections["FileNames"].items()}
    funcs = {k: v.strip('"') for k, v in sections["FunctionNames"].items()}
    locs = {}
    for k, v in sections["FileLocations"].items():
        f = dict(re.findall(r"(\w+)=(\d+)", v))
        locs[k] = (files.get(int(f["file_name_id"]), "?"), int(f["line"]), funcs.get(int(f["function_name_id"]), "?"))
    frames = {}
    for k, v in sections["StackFrames"].items():
        f = dict(re.findall(r"(\w+)=(\d+)", v))
        frames[k] = locs.get(int(f["file_location_id"]), ("?", 0, "?")) + (int(f["parent_frame_id"]),)
    return ops, frames


def source_of(frame_id: int, frames: dict) -> str:
    """The innermost frame in this repository, outside ``benchmarks/`` (else the innermost frame)."""
    chain, seen = [], set()
    while frame_id in frames and frame_id not in seen:
        seen.add(frame_id)
        file, line, func, parent = frames[frame_id]
        chain.append((file, line, func))
        frame_id = parent
    for file, line, func in chain:
        path = Path(file)
        if path.is_absolute() and ROOT in path.parents and "benchmarks" not in path.parts:
            return f"{path.relative_to(ROOT)}:{line} {func}"
    return f"{chain[0][0]}:{chain[0][1]} {chain[0][2]}" if chain else "?"


def self_times(events: list) -> dict:
    """Self time (us) per HLO op: duration minus that of ops nested in it on the same thread."""
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "hlo_op" in e.get("args", {}):
            by_thread[(e["pid"], e["tid"])].append(e)
    totals = collections.Counter()
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []
        for e in evs:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            if stack:
                totals[stack[-1]["args"]["hlo_op"]] -= e["dur"]
            totals[e["args"]["hlo_op"]] += e["dur"]
            stack.append(e)
    return totals


def pessimism_per_seed(key, strength: float = 8.0):
    """P2's policy-level pessimistic solve at nash-intransitive's paper shape (benchmarks/pessimism_solver.py)."""
    import jax
    import bandits as b
    from algorithms.core import confidence as conf
    from algorithms.nash import pessimism as ps
    from algorithms.nash import preference_model as gp
    cfg = b.InstanceConfig(n_contexts=128, n_actions=32, dim=8, reward_norm=1.0, kl_coef=0.1, skew_strength=strength)
    k_inst, k_data = jax.random.split(key)
    inst = b.make_instance(k_inst, cfg)
    data = b.sample_preference_data(k_data, inst, inst.log_pi0, inst.log_pi0, 16384)
    cs = gp.mle_confidence_set(inst, data, 16384, 1.0, conf.ConfidenceConfig(c_beta=0.5))
    return ps.policy_pessimistic_policy(inst, cs).value


def workload(name: str, args):
    """``(per-seed function of the key alone, keys)`` of a workload."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from experiments.engine.runner import seed_keys
    keys = seed_keys(0, args.seeds)
    if name == "offline":
        import offline_mle_gibbs as om
        return functools.partial(om.ours_per_seed, config=om.BenchConfig()), keys
    if name == "pessimism":
        return pessimism_per_seed, keys
    if name == "nash-kl-sweep":
        import jax.numpy as jnp
        from experiments.catalogue import nash_kl_sweep as nks
        from experiments.engine.config import replace
        config = nks.presets["paper"]
        if args.iterations:
            config = replace(config, iterations=args.iterations)
        kl_coefs = jnp.asarray(config.kl_coefs[:1])
        return lambda key: nks.per_seed(key, kl_coefs, config), keys
    if name == "offline-rate":
        from experiments.catalogue import offline_rate as orate
        config = orate.presets["paper"]
        _, coverage, temperature, kl_coef = config.settings()[0]
        fn = functools.partial(orate.per_seed, config=config)
        return lambda key: fn(key, coverage, temperature, kl_coef), keys
    import online_loop as ol
    from experiments.catalogue import online_common as oe
    sz = dataclasses.replace(ol.Sizes(), **{k: v for k, v in (("n_contexts", args.n_contexts),
                                                               ("n_actions", args.n_actions),
                                                               ("iterations", args.iterations),
                                                               ("batch_size", args.batch_size)) if v})
    config = ol.explore_config(sz)
    coverage, temperature = config.setting_values("hard")
    fn = functools.partial(oe.per_seed, config=config, group=(ol.STRATEGY,), online=config.online, offline_size=0)
    return lambda key: fn(key, coverage, temperature, 0), keys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workload", choices=("offline", "online", "pessimism", "offline-rate", "nash-kl-sweep"))
    p.add_argument("--seeds", type=int, default=128)
    p.add_argument("--n-contexts", type=int)
    p.add_argument("--n-actions", type=int)
    p.add_argument("--iterations", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FLAG).strip()
    import jax
    jax.config.update("jax_enable_x64", True)
    from xprof.convert import raw_to_tool_data

    fn, keys = workload(args.workload, args)
    program = jax.jit(jax.vmap(fn))
    compiled = program.lower(keys).compile()
    jax.block_until_ready(compiled(keys))
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(keys))
    wall = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    trace_dir = args.out / "trace"
    jax.profiler.start_trace(str(trace_dir))
    jax.block_until_ready(compiled(keys))
    jax.profiler.stop_trace()
    xplane = sorted(glob.glob(str(trace_dir / "plugins/profile/*/*.xplane.pb")))[-1]
    data, _ = raw_to_tool_data.xspace_to_tool_data([xplane], "trace_viewer", {})
    events = json.loads(data)["traceEvents"]
    ops_time = self_times(events)
    ops_frame, frames = stack_tables(compiled.as_text())
    by_source = collections.Counter()
    for op, us in ops_time.items():
        by_source[source_of(ops_frame[op], frames) if op in ops_frame else "(no metadata) " + op] += us
    total = sum(ops_time.values())
    report = {"workload": args.workload, "seeds": args.seeds, "untraced_wall_s": wall,
              "summed_self_time_s": total / 1e6,
              "by_source": [(k, v / 1e6, v / total) for k, v in by_source.most_common()],
              "by_op": [(k, v / 1e6, v / total) for k, v in ops_time.most_common(200)]}
    (args.out / "profile.json").write_text(json.dumps(report, indent=1))
    print(f"{args.workload}, {args.seeds} seeds: untraced call {wall:.2f} s; summed op self time {total / 1e6:.2f} s")
    print("by source line:")
    for k, s, f in report["by_source"][:args.top]:
        print(f"  {100 * f:5.1f}%  {s:7.3f} s  {k}")
    print("by HLO op:")
    for k, s, f in report["by_op"][:args.top]:
        print(f"  {100 * f:5.1f}%  {s:7.3f} s  {k}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
