#!/usr/bin/env bash
# Distribution benchmark (issue 4), release build, loopback, this machine:
#  1. one agent pulling a ~1 GiB bundle over QUIC, goodput against curl
#     downloading the same bytes over HTTPS/TCP from `openssl s_server` on the
#     same machine, interleaved, ROUNDS rounds, medians; curl both discards
#     the bytes (-o /dev/null) and stores them to a file beside the agent's
#     data (the agent stores what it fetches);
#  2. SWARM agents pulling one ~100 MiB bundle at once: total time until all
#     are active, and the hub's peak memory (VmHWM).
# Usage: bench/sync/run.sh [ROUNDS] [SWARM]
# BENCH_BIN=DIR uses prebuilt binaries from DIR instead of building.
# With PERF=FILE, `perf record -a -g` profiles the whole machine during the
# first round's agent run into FILE (read it with `perf report -i FILE`);
# with PERFSECS=S as well, only S seconds from PERFDELAY (default 0.6)
# seconds after the agent starts, so inside the fetch.
set -euo pipefail
ROUNDS=${1:-3}
SWARM=${2:-50}
cd "$(dirname "$0")/../.."
# BENCH_BIN=DIR runs the binaries already in DIR (flotilla, flotilla-hub,
# flotilla-agent, examples/gen_mlp) without building.
if [ -n "${BENCH_BIN:-}" ]; then
  T=$BENCH_BIN
else
  cargo build --release --bins -p flotilla-hub -p flotilla-agent
  cargo build --release -p flotilla-e2e --example gen_mlp
  T=${CARGO_TARGET_DIR:-target}/release
fi
W=$(mktemp -d /tmp/flotilla-bench-sync.XXXXXX)
PIDS=()
cleanup() {
  rc=$?
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ "$rc" -eq 0 ]; then rm -rf "$W"; else echo "failed (exit $rc); files kept in $W" >&2; fi
}
trap cleanup EXIT

"$T/examples/gen_mlp" "$W/big.onnx" 4096 16 1 >/dev/null     # 16 x 64 MiB
"$T/examples/gen_mlp" "$W/mid.onnx" 2048 6 2 >/dev/null      # 6 x 16 MiB
BIG=$(stat -c %s "$W/big.onnx"); MID=$(stat -c %s "$W/mid.onnx")

"$T/flotilla-hub" serve --data-dir "$W/hub" --api-listen 127.0.0.1:0 --sync-listen 127.0.0.1:0 >"$W/hub.out" 2>"$W/hub.err" &
HUB=$!; PIDS+=("$HUB")
for _ in $(seq 100); do grep -q "sync listening" "$W/hub.out" 2>/dev/null && break; sleep 0.1; done
export FLOTILLA_HUB=$(grep -o 'http://[0-9.:]*' "$W/hub.out" | head -1)
export FLOTILLA_TOKEN=$(cat "$W/hub/admin-token")
export FLOTILLA_CONFIG="$W/cli.toml"
SYNC=$(grep "sync listening" "$W/hub.out" | grep -oE '[0-9.]+:[0-9]+' | head -1)
FP=$("$T/flotilla" --output json hub info | python3 -c 'import json,sys; print(json.load(sys.stdin)["ca_fingerprint"])')
"$T/flotilla" model register "$W/big.onnx" --name big --reason bench >/dev/null
"$T/flotilla" model register "$W/mid.onnx" --name mid --reason bench >/dev/null
"$T/flotilla" endpoint create big --deployment blue=big:1 --traffic blue=100 --selector site=big --reason bench >/dev/null
"$T/flotilla" endpoint create mid --deployment blue=mid:1 --traffic blue=100 --selector site=swarm --reason bench >/dev/null

enrol() { # DIR SITE
  local tok
  tok=$("$T/flotilla" --output json device token create --labels "site=$2" --ttl 1h | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  "$T/flotilla-agent" enroll --data-dir "$1" --hub "$SYNC" --token "$tok" --hub-ca-fingerprint "$FP" >/dev/null
}
status_field() { # DIR PYEXPR
  { "$T/flotilla-agent" status --output json --data-dir "$1" 2>/dev/null || true; } | python3 -c "import json,sys
try:
    s=json.load(sys.stdin); print($2)
except Exception: print('')"
}

# HTTPS peer: openssl s_server serving the same file.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=localhost -keyout "$W/k.pem" -out "$W/c.pem" 2>/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$W" && exec openssl s_server -WWW -accept "$PORT" -cert c.pem -key k.pem -quiet) >/dev/null 2>&1 &
PIDS+=("$!")
sleep 0.5

echo "bundle: $BIG bytes; rounds: $ROUNDS"
Q=(); C=(); CF=()
for r in $(seq "$ROUNDS"); do
  ct=$(curl -sk -o /dev/null -w '%{time_total}' "https://127.0.0.1:$PORT/big.onnx")
  C+=("$ct")
  # The same download stored to a file on the agent's filesystem: the agent
  # stores what it fetches, so this is the like-for-like peer.
  cf=$(curl -sk -o "$W/curl.out" -w '%{time_total}' "https://127.0.0.1:$PORT/big.onnx")
  rm -f "$W/curl.out"
  CF+=("$cf")
  D="$W/agent-big-$r"; enrol "$D" big
  PP=""
  if [ -n "${PERF:-}" ] && [ "$r" -eq 1 ] && [ -z "${PERFSECS:-}" ]; then
    perf record -a -g -o "$PERF" >/dev/null 2>&1 & PP=$!
    sleep 0.5
  fi
  "$T/flotilla-agent" run --data-dir "$D" --listen 127.0.0.1:0 >/dev/null 2>"$D.log" & A=$!; PIDS+=("$A")
  if [ -n "${PERF:-}" ] && [ "$r" -eq 1 ] && [ -n "${PERFSECS:-}" ]; then
    # Only a window inside the fetch: PERFDELAY seconds after the agent
    # starts, for PERFSECS seconds.
    (sleep "${PERFDELAY:-0.6}"; exec perf record -a -g ${PERFEVENTS:+-e "$PERFEVENTS"} -o "$PERF" -- sleep "$PERFSECS") >/dev/null 2>&1 &
  fi
  f=""
  # Wait with a cheap grep on the status file (starting `flotilla-agent
  # status` and python every 0.2 s took ~6% of the CPU the fetch runs on).
  for _ in $(seq 1200); do
    grep -q '"last_fetch": {' "$D/status.json" 2>/dev/null && break; sleep 0.2
  done
  f=$(status_field "$D" 's["last_fetch"]["secs"] if s.get("last_fetch") else ""')
  [ -n "$f" ] || { echo "round $r: the agent did not finish its fetch; see $D.log" >&2; exit 1; }
  fb=$(status_field "$D" 's["last_fetch"]["bytes"]')
  if [ -n "$PP" ]; then kill -INT "$PP"; wait "$PP" 2>/dev/null || true; fi
  # The agent's CPU time (user + system) from its start to here.
  cpu=$(awk '{print ($14 + $15) / '"$(getconf CLK_TCK)"'}' "/proc/$A/stat" 2>/dev/null || echo 0)
  kill "$A" 2>/dev/null || true; wait "$A" 2>/dev/null || true
  rm -rf "$D"
  Q+=("$f")
  python3 -c "print(f'round $r: quic agent {$fb/1048576/$f:.0f} MiB/s ({$f:.2f}s for $fb bytes; agent CPU {$cpu:.2f}s), curl https to /dev/null {$BIG/1048576/$ct:.0f} MiB/s ({$ct:.2f}s), to a file {$BIG/1048576/$cf:.0f} MiB/s ({$cf:.2f}s)')"
done
python3 - "$BIG" "${Q[*]}" "${C[*]}" "${CF[*]}" <<'PY'
import statistics, sys
size = int(sys.argv[1]); q, c, cf = ([float(x) for x in a.split()] for a in sys.argv[2:5])
mq, mc, mf = statistics.median(q), statistics.median(c), statistics.median(cf)
print(f"median: agent {size/1048576/mq:.0f} MiB/s, curl to /dev/null {size/1048576/mc:.0f} MiB/s (ratio {mc/mq:.2f}x), curl to a file {size/1048576/mf:.0f} MiB/s (ratio {mf/mq:.2f}x)")
PY

echo "swarm: $SWARM agents pulling $MID bytes at once"
for i in $(seq "$SWARM"); do enrol "$W/swarm-$i" swarm; done
BASE=$(grep VmRSS /proc/$HUB/status | awk '{print $2}')
# Reset the peak RSS counter (Linux: clear_refs 5) so the peak is the swarm's.
echo 5 > /proc/$HUB/clear_refs 2>/dev/null || echo "(could not reset VmHWM; the peak includes registration)"
start=$(date +%s.%N)
SP=()
for i in $(seq "$SWARM"); do
  "$T/flotilla-agent" run --data-dir "$W/swarm-$i" --listen 127.0.0.1:0 >/dev/null 2>"$W/swarm-$i.log" & SP+=("$!"); PIDS+=("$!")
done
for _ in $(seq 6000); do
  n=0
  for i in $(seq "$SWARM"); do
    grep -q '"state": "active"' "$W/swarm-$i/status.json" 2>/dev/null && n=$((n+1))
  done
  [ "$n" -eq "$SWARM" ] && break
  sleep 0.2
done
end=$(date +%s.%N)
PEAK=$(grep VmHWM /proc/$HUB/status | awk '{print $2}')
APEAK=0; ANOW=0
for p in "${SP[@]}"; do
  a=$(awk '/VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
  [ "${a:-0}" -gt "$APEAK" ] && APEAK=$a
  a=$(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
  [ "${a:-0}" -gt "$ANOW" ] && ANOW=$a
done
python3 -c "print(f'swarm: {$n}/$SWARM active in {$end-$start:.1f}s; hub RSS before {$BASE/1024:.0f} MiB, peak during the swarm {$PEAK/1024:.0f} MiB (VmHWM); largest agent peak {$APEAK/1024:.0f} MiB, largest agent RSS once active {$ANOW/1024:.0f} MiB')"
for p in "${SP[@]}"; do kill "$p" 2>/dev/null || true; done
