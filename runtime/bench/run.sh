#!/bin/sh
# Reproduces the runtime speed table in docs/benchmarks.md (issue 5, section 4):
# builds the Rust worker in release mode, generates the models with fixed seeds and
# times Flotilla against ONNX Runtime, interleaved, at 1 and 2 threads.
# Needs python3 with `pip install onnx==1.23.2 onnxruntime` (the benchmark only;
# no test needs Python). Extra arguments go to bench.py (e.g. --only cnn_b1).
# Honours CARGO_TARGET_DIR as cargo does.
set -eu
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p flotilla-runtime --example bench_worker
python3 runtime/bench/gen_models.py bench "$target/bench-models" >/dev/null
python3 runtime/bench/bench.py --models "$target/bench-models" \
    --worker "$target/release/examples/bench_worker" "$@"
