#!/usr/bin/env bash
# Serving benchmark (issue 6), loopback, this machine: the MLP of the executor
# benchmark (64-256-256-10, Gemm + Relu, one row of 64 floats per request)
# behind HTTP, Open Inference Protocol v2 JSON, `POST /v2/models/mlp/infer`:
#  1. `flotilla-agent serve` against FastAPI + uvicorn + ONNX Runtime serving
#     the same model (bench/serving/fastapi_server.py; one worker, and an extra
#     row with FASTAPI_EXTRA_WORKERS workers), driven by the same closed-loop
#     client (agent/examples/http_load.rs) at each concurrency in CONCURRENCIES,
#     interleaved: ROUNDS rounds, each running every server for SECS measured
#     seconds after WARMUP_SECS of warm-up, the server order rotating per round.
#     Reported: the median over rounds of p50, p99 and throughput per server,
#     and agent/FastAPI ratios (latency agent/FastAPI, throughput
#     FastAPI/agent: below 1 the agent is better on both);
#  2. the bare executor call (`Model::run` alone, agent/examples/bare_run.rs)
#     and ONNX Runtime's `InferenceSession.run` alone (Python), on the same
#     input, one thread, SECS seconds each; the agent's overhead is its HTTP p50
#     at concurrency 1 minus the bare p50 (goal: under 100 us).
# Threads: RAYON_NUM_THREADS=1 for the agent and bare_run, and ONNX Runtime with
# intra_op_num_threads=1, inter_op_num_threads=1, sequential, so one request is
# one thread of model work on both sides. The agent otherwise runs as shipped
# (up to one model run per CPU at once, tokio on every CPU).
# Needs python3 (with venv) and PyPI access the first time: the venv at
# BENCH_VENV (default ~/.cache/flotilla-bench-venv) gets fastapi,
# uvicorn[standard], onnxruntime and numpy unless they are already importable.
# The client runs on the same machine as the servers: run it on a quiet one.
#
# Usage: bench/serving/run.sh [SECS]   (default 10)
# Environment: ROUNDS (3), WARMUP_SECS (2), CONCURRENCIES ("1 32"),
#   FASTAPI_EXTRA_WORKERS (nproc; 0 or 1 = no extra row), PROFILE (release;
#   "debug" for a quick smoke run, whose numbers mean nothing), BENCH_VENV,
#   KEEP=1 to keep the work folder after a successful run.
# Output: progress on stderr, then a markdown section for docs/benchmarks.md on
# stdout. Files are kept (and named) on failure.
set -euo pipefail
SECS=${1:-10}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP_SECS:-2}
CONCURRENCIES=${CONCURRENCIES:-"1 32"}
EXTRA_WORKERS=${FASTAPI_EXTRA_WORKERS:-$(nproc)}
PROFILE=${PROFILE:-release}
VENV=${BENCH_VENV:-$HOME/.cache/flotilla-bench-venv}
cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=$ROOT/bench/serving

say() { echo "== $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

for v in "$SECS" "$WARMUP"; do
  [[ $v =~ ^[0-9]+([.][0-9]+)?$ ]] || die "SECS and WARMUP_SECS must be numbers of seconds (got '$v')"
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
[[ $EXTRA_WORKERS =~ ^[0-9]+$ ]] || die "FASTAPI_EXTRA_WORKERS must be an integer (got '$EXTRA_WORKERS')"
for c in $CONCURRENCIES; do
  [[ $c =~ ^[1-9][0-9]*$ ]] || die "CONCURRENCIES must be positive integers (got '$c')"
done
command -v setsid >/dev/null || die "setsid (util-linux) is needed to stop the servers' process groups"

# 1. Build.
case $PROFILE in
  debug | dev) PROFILE_FLAGS=() BIN_DIR=debug ;;
  *) PROFILE_FLAGS=(--profile "$PROFILE") BIN_DIR=$PROFILE ;;
esac
say "building ($PROFILE)"
cargo build "${PROFILE_FLAGS[@]}" -p flotilla-agent --bin flotilla-agent --example http_load --example bare_run
T=${CARGO_TARGET_DIR:-target}/$BIN_DIR
for b in "$T/flotilla-agent" "$T/examples/http_load" "$T/examples/bare_run"; do
  [ -x "$b" ] || die "$b was not built"
done

# 2. The Python side.
if ! "$VENV/bin/python" -c 'import fastapi, uvicorn, onnxruntime, numpy' 2>/dev/null; then
  say "installing fastapi, uvicorn[standard], onnxruntime, numpy into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" ||
    die "cannot create a venv at $VENV (python3 -m venv; on Debian: apt install python3-venv)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip ||
    die "pip cannot reach PyPI; install fastapi uvicorn[standard] onnxruntime numpy into $VENV by hand"
  "$VENV/bin/python" -m pip install --quiet fastapi 'uvicorn[standard]' onnxruntime numpy ||
    die "pip install failed (see above)"
fi
PY=$VENV/bin/python

W=$(mktemp -d /tmp/flotilla-bench-serving.XXXXXX)
PIDS=()
cleanup() {
  local rc=$?
  # Each server leads its own process group (setsid), so uvicorn's worker
  # processes go with their parent.
  for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$p" 2>/dev/null || true
  done
  if [ "$rc" -eq 0 ] && [ "${KEEP:-0}" != 1 ]; then
    rm -rf "$W"
  elif [ "$rc" -eq 0 ]; then
    echo "files kept in $W" >&2
  else
    echo "failed (exit $rc); files kept in $W" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

load1=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
  echo "warning: 1-minute load average is $load1; the numbers need a quiet machine" >&2
fi

# 3. The model and the request body (the same bytes go to every server).
"$T/examples/bare_run" write-mlp "$W/mlp.onnx" --layers 64,256,256,10 --seed 1 2>/dev/null
"$PY" - "$W/body.json" <<'EOF'
import json, sys
import numpy as np
# float32 values written as the float64 decimals that read back exactly.
x = np.random.default_rng(0).standard_normal(64).astype(np.float32)
body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                    "data": [float(v) for v in x]}]}
with open(sys.argv[1], "w") as f:
    json.dump(body, f)
EOF

# 4. Servers.
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ready() { # URL: 200 from GET URL
  "$PY" -c 'import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)' "$1"
}
wait_ready() { # LABEL PID URL LOG
  for _ in $(seq 600); do
    kill -0 "$2" 2>/dev/null || { tail -n 20 "$4" >&2; die "$1 exited while starting (log: $4)"; }
    ready "$3" && return 0
    sleep 0.1
  done
  tail -n 20 "$4" >&2
  die "$1 not ready at $3 after 60 s (log: $4)"
}

say "starting flotilla-agent serve"
RAYON_NUM_THREADS=1 setsid "$T/flotilla-agent" serve --model "$W/mlp.onnx" --name mlp \
  --listen 127.0.0.1:0 >"$W/agent.out" 2>"$W/agent.err" &
AGENT_PID=$!
PIDS+=("$AGENT_PID")
for _ in $(seq 300); do
  grep -q '^scoring listening on http://' "$W/agent.out" 2>/dev/null && break
  kill -0 "$AGENT_PID" 2>/dev/null || { tail -n 20 "$W/agent.err" >&2; die "the agent exited while starting"; }
  sleep 0.1
done
AGENT_URL=$(sed -n 's|^scoring listening on \(http://[^ ]*\).*|\1|p' "$W/agent.out" | head -n 1)
[ -n "$AGENT_URL" ] || { tail -n 20 "$W/agent.err" >&2; die "the agent printed no address in 30 s"; }
wait_ready agent "$AGENT_PID" "$AGENT_URL/v2/health/ready" "$W/agent.err"

declare -A URL=([agent]=$AGENT_URL)
SERVERS=(agent)
start_fastapi() { # LABEL WORKERS
  local port
  port=$(free_port)
  setsid "$PY" "$HERE/fastapi_server.py" serve --model "$W/mlp.onnx" --name mlp --port "$port" \
    --workers "$2" >"$W/$1.out" 2>"$W/$1.err" &
  local pid=$!
  PIDS+=("$pid")
  URL[$1]=http://127.0.0.1:$port
  wait_ready "$1" "$pid" "${URL[$1]}/v2/health/ready" "$W/$1.err"
  SERVERS+=("$1")
}
say "starting FastAPI (1 worker)"
start_fastapi fastapi 1
if [ "$EXTRA_WORKERS" -gt 1 ]; then
  say "starting FastAPI ($EXTRA_WORKERS workers)"
  start_fastapi "fastapi-w$EXTRA_WORKERS" "$EXTRA_WORKERS"
  # uvicorn answers from the first worker up; give the others time to import.
  sleep 3
fi

# Both sides must compute the same thing before their speed means anything.
for s in "${SERVERS[@]}"; do
  "$PY" - "${URL[$s]}/v2/models/mlp/infer" "$W/body.json" "$W/answer-$s.json" <<'EOF' || die "$s did not answer the request body (see above)"
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=open(sys.argv[2], "rb").read(),
                             headers={"content-type": "application/json"})
with urllib.request.urlopen(req, timeout=10) as r:
    open(sys.argv[3], "wb").write(r.read())
EOF
done
"$PY" - "$W" "${SERVERS[@]}" <<'EOF' || die "the servers' answers differ"
import json, sys
import numpy as np
w, servers = sys.argv[1], sys.argv[2:]
outs = {}
for s in servers:
    a = json.load(open(f"{w}/answer-{s}.json"))
    o = a["outputs"][0]
    assert o["shape"] == [1, 10] and o["datatype"] == "FP32", f"{s}: {o['shape']} {o['datatype']}"
    outs[s] = np.asarray(o["data"], dtype=np.float32)
for s in servers[1:]:
    d = float(np.abs(outs[s] - outs["agent"]).max())
    print(f"   output max abs diff agent vs {s}: {d:.2e}", file=sys.stderr)
    if d > 1e-4:
        sys.exit(f"{s} answers differ from the agent's by {d}")
EOF

# 5. Load, interleaved.
n=${#SERVERS[@]}
for c in $CONCURRENCIES; do
  for r in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
      s=${SERVERS[$(((i + r - 1) % n))]}
      out=$W/load-$s-c$c-r$r.json
      say "round $r/$ROUNDS, concurrency $c: $s"
      "$T/examples/http_load" --url "${URL[$s]}/v2/models/mlp/infer" --body "$W/body.json" \
        --concurrency "$c" --secs "$SECS" --warmup-secs "$WARMUP" >"$out" 2>"$W/load-$s-c$c-r$r.err" ||
        { cat "$W/load-$s-c$c-r$r.err" >&2; die "http_load against $s failed"; }
      cat "$out" >&2
    done
  done
done

# 6. The HTTP floor: the same client, one connection, GET /v2/health/live on
# the agent (no body, no model): what loopback HTTP costs before any scoring.
say "HTTP floor (GET /v2/health/live on the agent, concurrency 1)"
: >"$W/empty"
"$T/examples/http_load" --url "$AGENT_URL/v2/health/live" --body "$W/empty" --concurrency 1 \
  --secs "$SECS" --warmup-secs "$WARMUP" >"$W/floor.json"
cat "$W/floor.json" >&2

# 7. Bare calls, with the servers idle.
say "bare executor call (Model::run, RAYON_NUM_THREADS=1)"
RAYON_NUM_THREADS=1 "$T/examples/bare_run" time --model "$W/mlp.onnx" --body "$W/body.json" \
  --secs "$SECS" --warmup-secs "$WARMUP" >"$W/bare-flotilla.json"
cat "$W/bare-flotilla.json" >&2
say "bare ONNX Runtime call (InferenceSession.run from Python, 1 thread)"
"$PY" "$HERE/fastapi_server.py" time-session --model "$W/mlp.onnx" --body "$W/body.json" \
  --secs "$SECS" --warmup-secs "$WARMUP" >"$W/bare-ort.json"
cat "$W/bare-ort.json" >&2

# 8. The table.
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
"$PY" - "$W" "$SECS" "$ROUNDS" "$WARMUP" "$PROFILE" "$(nproc)" "${CPU:-unknown CPU}" \
  "$(rustc --version 2>/dev/null || echo 'rustc ?')" "$CONCURRENCIES" "${SERVERS[@]}" <<'EOF'
import datetime, importlib.metadata as md, json, platform, statistics, sys
w, secs, rounds, warmup, profile, nproc, cpu, rustc, concs = sys.argv[1:10]
servers = sys.argv[10:]
rounds, concs = int(rounds), [int(c) for c in concs.split()]

def version(p):
    try:
        return md.version(p)
    except md.PackageNotFoundError:
        return "not installed"

def name(s):
    if s == "agent":
        return "Flotilla agent (`flotilla-agent serve`)"
    workers = 1 if s == "fastapi" else int(s.split("-w")[1])
    return f"FastAPI + uvicorn + ORT, {workers} worker{'s' if workers > 1 else ''}"

cell = {}
for s in servers:
    for c in concs:
        runs = [json.load(open(f"{w}/load-{s}-c{c}-r{r}.json")) for r in range(1, rounds + 1)]
        med = lambda k: statistics.median(x[k] for x in runs)
        cell[s, c] = dict(p50=med("p50_us"), p99=med("p99_us"), rps=med("throughput_rps"),
                          errors=sum(x["errors"] for x in runs),
                          p50s=[x["p50_us"] for x in runs], rpss=[x["throughput_rps"] for x in runs])
bare = json.load(open(f"{w}/bare-flotilla.json"))
ort = json.load(open(f"{w}/bare-ort.json"))

print(f"### Serving: MLP 64-256-256-10 behind HTTP (issue 6)\n")
if profile != "release":
    print(f"**{profile} build: a smoke run, not a measurement.**\n")
print(f"Machine: {nproc} CPUs, {cpu}; {platform.platform()}. "
      f"{datetime.date.today().isoformat()}. {rustc}; Python {platform.python_version()}, "
      f"onnxruntime {version('onnxruntime')}, fastapi {version('fastapi')}, uvicorn {version('uvicorn')} "
      f"(uvloop {version('uvloop')}, httptools {version('httptools')}).\n")
print(f"One row of 64 FP32 values per request, OIP v2 JSON, `POST /v2/models/mlp/infer`, loopback. "
      f"Closed-loop client (`agent/examples/http_load.rs`, one keep-alive connection per thread) on the same "
      f"machine; {rounds} interleaved rounds of {secs} s after {warmup} s of warm-up per server and "
      f"concurrency, median of rounds. One thread of model work per request on both sides "
      f"(RAYON_NUM_THREADS=1; ORT intra_op 1, inter_op 1, sequential).\n")
print("| server | concurrency | p50 (us) | p99 (us) | throughput (req/s) | errors |")
print("|---|---:|---:|---:|---:|---:|")
for c in concs:
    for s in servers:
        x = cell[s, c]
        print(f"| {name(s)} | {c} | {x['p50']:.0f} | {x['p99']:.0f} | {x['rps']:.0f} | {x['errors']} |")
print()
print("| concurrency | vs | p50 agent/FastAPI | p99 agent/FastAPI | throughput FastAPI/agent |")
print("|---:|---|---:|---:|---:|")
for c in concs:
    a = cell["agent", c]
    for s in servers[1:]:
        f = cell[s, c]
        print(f"| {c} | {name(s)} | {a['p50'] / f['p50']:.2f} | {a['p99'] / f['p99']:.2f} | {f['rps'] / a['rps']:.2f} |")
print()
c1 = 1 if 1 in concs else concs[0]
over = cell["agent", c1]["p50"] - bare["p50_us"]
ort_over = cell["fastapi", c1]["p50"] - ort["p50_us"]
goal = "met" if over < 100 else "NOT met"
print("| one call, one thread, no HTTP | runs | p50 (us) | p99 (us) |")
print("|---|---:|---:|---:|")
print(f"| Flotilla `Model::run` (`bare_run`) | {bare['runs']} | {bare['p50_us']:.1f} | {bare['p99_us']:.1f} |")
print(f"| ORT `InferenceSession.run` (Python) | {ort['runs']} | {ort['p50_us']:.1f} | {ort['p99_us']:.1f} |")
print()
print(f"Agent overhead at concurrency {c1}: HTTP p50 {cell['agent', c1]['p50']:.0f} us - bare p50 "
      f"{bare['p50_us']:.1f} us = **{over:.0f} us** (goal under 100 us: {goal}). This includes loopback TCP "
      f"and the client's own time, so it is an upper bound on the agent's share. The same difference for "
      f"FastAPI over a bare ORT call: {ort_over:.0f} us.\n")
floor = json.load(open(f"{w}/floor.json"))
own = over - floor["p50_us"]
print(f"HTTP floor: GET /v2/health/live on the agent with the same client, p50 {floor['p50_us']:.0f} us. "
      f"Without it, the agent's own scoring path (decode, validate, route, queue, hand the run to a "
      f"blocking thread, encode) costs about **{own:.0f} us** at p50 "
      f"(goal under 100 us: {'met' if own < 100 else 'NOT met'}).\n")
print("Per-round p50 (us) / throughput (req/s):\n")
for c in concs:
    for s in servers:
        x = cell[s, c]
        p50s = ", ".join(f"{v:.0f}" for v in x["p50s"])
        rpss = ", ".join(f"{v:.0f}" for v in x["rpss"])
        print(f"- {name(s)}, concurrency {c}: p50 [{p50s}]; throughput [{rpss}]")
EOF
