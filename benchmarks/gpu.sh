#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU (benchmarks/README.md, "gpu.sh"):
#
#   benchmarks/gpu.sh OUTDIR [--tiny]
#
# Runs from the repository with PYTHONPATH=. and installs nothing: $PYTHON (default python3) must already
# have a CUDA build of jax, and optax, scipy and matplotlib. In under 8 minutes (each step has a time limit)
# it runs ours of the offline benchmark (offline_mle_gibbs.py --part ours, 1024 seeds), ours of the online
# benchmark (online_loop.py --part jax, 1024 seeds) and the offline-rate paper preset at 1024 seeds, and
# writes OUTDIR/report.json (device, versions, per step: command, exit code, seconds, its JSON result) and
# OUTDIR/logs/<step>.log. A step that fails or runs out of time is recorded and the next one still runs.
#
# --tiny (or RLHF_GPU_TINY=1): the same steps at a tiny size, on whatever jax finds (a CPU is fine): an
# end-to-end check of this script (tests/test_gpu_script.py), timings meaningless.
# Time limits per step (seconds): GPU_SH_LIMIT_OFFLINE, GPU_SH_LIMIT_ONLINE, GPU_SH_LIMIT_PRESET.
# Exit codes: 0 every step finished; 1 a step failed or ran out of time; 2 bad usage or no GPU;
# 4 a required module is missing.
set -u

usage="usage: benchmarks/gpu.sh OUTDIR [--tiny]"
out="" tiny="${RLHF_GPU_TINY:-0}"
for arg in "$@"; do
    case "$arg" in
        --tiny) tiny=1 ;;
        -h|--help) echo "$usage"; exit 0 ;;
        -*) echo "gpu.sh: error: unknown option '$arg' ($usage)" >&2; exit 2 ;;
        *) if [ -n "$out" ]; then echo "gpu.sh: error: one OUTDIR, got '$out' and '$arg' ($usage)" >&2; exit 2; fi
           out="$arg" ;;
    esac
done
[ -n "$out" ] || { echo "gpu.sh: error: OUTDIR is missing ($usage)" >&2; exit 2; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$out/logs" || { echo "gpu.sh: error: cannot create $out/logs" >&2; exit 2; }
out="$(cd "$out" && pwd)"
cd "$repo"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
py="${PYTHON:-python3}"

missing="$("$py" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("jax", "jaxlib", "optax", "scipy", "matplotlib") if importlib.util.find_spec(m) is None))
EOF
)" || { echo "gpu.sh: error: $py does not run" >&2; exit 4; }
if [ -n "$missing" ]; then
    echo "gpu.sh: error: $py lacks: $missing (this script installs nothing: install them, for jax a CUDA build)" >&2
    exit 4
fi

"$py" - > "$out/device.json" 2> "$out/logs/device.log" <<'EOF'
import json, platform, jax
devices = jax.devices()
versions = {"python": platform.python_version(), "jax": jax.__version__}
for mod in ("jaxlib", "optax", "scipy", "numpy", "matplotlib"):
    try:
        versions[mod] = __import__(mod).__version__
    except Exception:
        versions[mod] = None
print(json.dumps({"backend": jax.default_backend(), "count": len(devices),
                  "kinds": sorted({d.device_kind for d in devices}), "versions": versions,
                  "host": platform.node(), "platform": platform.platform()}))
EOF
[ $? -eq 0 ] || { echo "gpu.sh: error: jax does not start; see $out/logs/device.log" >&2; exit 4; }
backend="$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["backend"])' "$out/device.json")"
if [ "$tiny" != 1 ] && [ "$backend" != gpu ]; then
    echo "gpu.sh: error: jax sees no GPU (backend '$backend'): install a CUDA build of jax, or pass --tiny for a CPU check" >&2
    exit 2
fi

if [ "$tiny" = 1 ]; then
    mode=tiny limit_offline="${GPU_SH_LIMIT_OFFLINE:-300}" limit_online="${GPU_SH_LIMIT_ONLINE:-300}"
    limit_preset="${GPU_SH_LIMIT_PRESET:-300}"
    offline_args=(--seeds 4 --repeats 1 --chunk-size 4)
    online_args=(--quick --seeds 4)
    preset_args=(offline-rate --preset quick --seeds 2 --set sample_sizes=16,64 panel_coverages=0.0
                 algorithms=mle_gibbs n_contexts=8 n_actions=4)
    preset_cache="${RLHF_BANDITS_COMPILATION_CACHE-}"   # the CLI's own default: a rerun compiles from disk
else   # 8 minutes in all: 120 + 120 + 210 s of limits, plus start-up
    mode=full limit_offline="${GPU_SH_LIMIT_OFFLINE:-120}" limit_online="${GPU_SH_LIMIT_ONLINE:-120}"
    limit_preset="${GPU_SH_LIMIT_PRESET:-210}"
    offline_args=(--seeds 1024 --repeats 3 --chunk-size 256)
    online_args=(--seeds 1024 --repeats 3 --chunk-size 1024)
    preset_args=(offline-rate --preset paper --seeds 1024)
    preset_cache=off   # measure the compilation, as the benchmarks do
fi

steps=()
step() {   # step NAME LIMIT COMMAND...: run it with a time limit, log it, record exit code and seconds
    local name="$1" limit="$2"; shift 2
    echo "gpu.sh: $name (limit ${limit} s): $*" >&2
    local t0 t1 code
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" > "$out/logs/$name.log" 2>&1
    code=$?
    t1=$(date +%s.%N)
    echo "gpu.sh: $name exit $code in $(awk "BEGIN {printf \"%.1f\", $t1 - $t0}") s (log: $out/logs/$name.log)" >&2
    steps+=("$name" "$code" "$(awk "BEGIN {print $t1 - $t0}")" "$limit" "$*")
}

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
step offline "$limit_offline" "$py" benchmarks/offline_mle_gibbs.py --part ours "${offline_args[@]}" --out "$out/offline"
step online "$limit_online" "$py" benchmarks/online_loop.py --part jax "${online_args[@]}" --out "$out/online"
step preset "$limit_preset" env ${preset_cache:+RLHF_BANDITS_COMPILATION_CACHE=$preset_cache} \
    "$py" -m experiments run "${preset_args[@]}" --out "$out/runs"

"$py" - "$out" "$mode" "$started" "${steps[@]}" <<'EOF'
import glob, json, os, subprocess, sys
out, mode, started, rest = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
results = {"offline": "offline/ours_*dev.json", "online": "online/jax_*.json", "preset": "runs/*/manifest.json"}
steps = []
for i in range(0, len(rest), 5):
    name, code, seconds, limit, command = rest[i:i + 5]
    found = sorted(glob.glob(os.path.join(out, results[name])))
    result = None
    if found and int(code) == 0:
        result = json.load(open(found[0]))
        if name == "preset":   # the manifest's timing and identity, not its whole config
            result = {k: result.get(k) for k in ("experiment", "preset", "seeds", "dtype", "devices", "timings",
                                                 "summary", "results")}
            result["timings"] = {k: v for k, v in (result["timings"] or {}).items() if k != "calls"}
    steps.append({"name": name, "command": command, "exit_code": int(code), "timed_out": int(code) in (124, 137),
                  "seconds": float(seconds), "limit_s": float(limit), "log": f"logs/{name}.log", "result": result})
try:
    rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip() or None
except Exception:
    rev = None
report = {"mode": mode, "started": started, "git_revision": rev,
          "device": json.load(open(os.path.join(out, "device.json"))), "steps": steps,
          "total_s": sum(s["seconds"] for s in steps), "ok": all(s["exit_code"] == 0 for s in steps)}
with open(os.path.join(out, "report.json.tmp"), "w") as f:
    json.dump(report, f, indent=1)
os.replace(os.path.join(out, "report.json.tmp"), os.path.join(out, "report.json"))
print(os.path.join(out, "report.json"))
sys.exit(0 if report["ok"] else 1)
EOF
