#!/usr/bin/env bash
# Telemetry benchmark (issue 7), release build, loopback, this machine:
#  1. hub ingest with AGENTS simulated agents (the agent's real Publisher, many
#     per process: agent/examples/telemetry_load.rs) for SECS seconds with
#     WINDOW-second windows, through the hub's embedded broker and through a
#     Mosquitto of our own (the hub as a client): windows acknowledged per
#     second, end-to-end ack latency p50/p99, hub memory per connected device
#     (RSS with the agents connected minus RSS before, over AGENTS);
#  2. an idle real agent (`flotilla-agent run`, telemetry on, 10 s windows,
#     no model) for IDLE seconds: resident memory and CPU.
# Usage: bench/telemetry/run.sh [AGENTS] [SECS] [WINDOW] [IDLE]
set -euo pipefail
AGENTS=${1:-1000}
SECS=${2:-60}
WINDOW=${3:-10}
IDLE=${4:-60}
cd "$(dirname "$0")/../.."
cargo build --release --bins -p flotilla-hub -p flotilla-agent
cargo build --release -p flotilla-agent --example telemetry_load
T=${CARGO_TARGET_DIR:-target}/release
W=$(mktemp -d /tmp/flotilla-bench-telemetry.XXXXXX)
PIDS=()
cleanup() {
  rc=$?
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ "$rc" -eq 0 ]; then rm -rf "$W"; else echo "failed (exit $rc); files kept in $W" >&2; fi
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_hub() { # DATA [ENV...]
  local data=$1; shift
  env "$@" FLOTILLA_LOG=warn "$T/flotilla-hub" serve --data-dir "$data" --api-listen 127.0.0.1:0 \
    --sync-listen 127.0.0.1:0 >"$data.out" 2>"$data.err" &
  HUB=$!; PIDS+=("$HUB")
  for _ in $(seq 200); do grep -q "mqtt listening\|sync listening" "$data.out" 2>/dev/null && break; sleep 0.1; done
  sleep 0.5
  URL=$(grep -o 'http://[0-9.:]*' "$data.out" | head -1)
  TOKEN=$(cat "$data/admin-token")
}

run_load() { # LABEL
  local before after
  before=$(rss_kib "$HUB")
  "$T/examples/telemetry_load" --hub "$URL" --token "$TOKEN" --agents "$AGENTS" --secs "$SECS" \
    --window-secs "$WINDOW" --dir "$W/load-$1" >"$W/load-$1.json" 2>"$W/load-$1.err" &
  local L=$!; PIDS+=("$L")
  # Peak hub RSS while the agents are connected.
  local peak=0
  while kill -0 "$L" 2>/dev/null; do
    r=$(rss_kib "$HUB" || echo 0); [ "${r:-0}" -gt "$peak" ] && peak=$r
    sleep 1
  done
  wait "$L"
  after=$peak
  python3 - "$W/load-$1.json" "$1" "$before" "$after" "$AGENTS" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); label = sys.argv[2]
before, after, n = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print(f"{label}: {r['agents']} agents ({r['agents_acked']} acked), {r['window_secs']} s windows, {r['secs']:.0f} s: "
      f"{r['windows_acked']} windows acked = {r['windows_per_sec']:.0f}/s; ack latency p50 {r['ack_latency_p50_ms']:.1f} ms, "
      f"p99 {r['ack_latency_p99_ms']:.1f} ms; dropped {r['dropped']}; hub RSS {before/1024:.0f} -> {after/1024:.0f} MiB "
      f"= {(after-before)/n:.0f} KiB per connected device")
EOF
}

echo "== ingest through the embedded broker"
start_hub "$W/hub-embedded" FLOTILLA_HUB_MQTT_LISTEN=127.0.0.1:0
run_load embedded
kill "$HUB"; wait "$HUB" 2>/dev/null || true

echo "== ingest through Mosquitto"
MQ=$(free_port)
cat >"$W/mosquitto.conf" <<EOF
listener $MQ 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 100000
set_tcp_nodelay true
EOF
mosquitto -c "$W/mosquitto.conf" >/dev/null 2>&1 &
PIDS+=("$!")
sleep 0.5
start_hub "$W/hub-mosquitto" FLOTILLA_HUB_MQTT_MODE=external "FLOTILLA_HUB_MQTT_URL=127.0.0.1:$MQ"
run_load mosquitto
kill "$HUB"; wait "$HUB" 2>/dev/null || true

echo "== idle agent with telemetry on (${IDLE} s, 10 s windows, no model)"
start_hub "$W/hub-idle" FLOTILLA_HUB_MQTT_LISTEN=127.0.0.1:0
SYNC=$(grep "sync listening" "$W/hub-idle.out" | grep -oE '[0-9.]+:[0-9]+' | head -1)
export FLOTILLA_HUB=$URL FLOTILLA_TOKEN=$TOKEN FLOTILLA_CONFIG="$W/cli.toml"
FP=$("$T/flotilla" --output json hub info | python3 -c 'import json,sys; print(json.load(sys.stdin)["ca_fingerprint"])')
TOK=$("$T/flotilla" --output json device token create --labels site=idle --ttl 1h | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
"$T/flotilla-agent" enroll --data-dir "$W/idle" --hub "$SYNC" --token "$TOK" --hub-ca-fingerprint "$FP" >/dev/null
"$T/flotilla-agent" run --data-dir "$W/idle" --listen 127.0.0.1:0 >/dev/null 2>"$W/idle.log" &
A=$!; PIDS+=("$A")
sleep 5
TCK=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
c0=$(cpu "$A"); t0=$(date +%s.%N)
sleep "$IDLE"
c1=$(cpu "$A"); t1=$(date +%s.%N)
rss=$(rss_kib "$A")
acked=$("$T/flotilla-agent" status --output json --data-dir "$W/idle" | python3 -c 'import json,sys; print(json.load(sys.stdin)["telemetry"]["acked_seq"])')
python3 -c "print(f'idle agent: RSS {$rss/1024:.1f} MiB, CPU {($c1-$c0)/$TCK/($t1-$t0)*100:.2f}% of one core over {$t1-$t0:.0f} s; windows acked: $acked')"
