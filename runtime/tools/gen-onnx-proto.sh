#!/usr/bin/env bash
# Regenerates runtime/src/onnx/onnx.rs: the ONNX protobuf schema as prost types.
#
# The generated file is committed, so building flotilla-runtime needs neither protoc
# nor a build.rs. Run this only to move to another ONNX schema version:
#
#     runtime/tools/gen-onnx-proto.sh            # from the repository root
#     ONNX_VERSION=1.23.2 runtime/tools/gen-onnx-proto.sh
#
# What it does, all in a scratch directory outside the repository:
#   1. installs onnx==$ONNX_VERSION (which ships onnx/onnx-ml.proto) and grpcio-tools
#      (which ships protoc as `python -m grpc_tools.protoc`) into a Python venv;
#   2. builds a throwaway cargo project that calls prost-build 0.13 (with its
#      cleanup-markdown feature, so proto comments make no doctests) on onnx-ml.proto,
#      with PROTOC pointing at a wrapper around grpc_tools.protoc;
#   3. prepends a provenance header, runs rustfmt and writes the result over
#      runtime/src/onnx/onnx.rs.
#
# Needs: python3 (with venv), cargo, rustfmt, and access to PyPI and crates.io.
set -euo pipefail

ONNX_VERSION="${ONNX_VERSION:-1.23.2}"
PROST_BUILD_VERSION="${PROST_BUILD_VERSION:-0.13}"
PYTHON="${PYTHON:-python3}"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dest="$repo_root/runtime/src/onnx/onnx.rs"
work="$(mktemp -d "${TMPDIR:-/tmp}/flotilla-onnxgen.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "scratch dir: $work" >&2

# 1. Python side: the .proto file and a protoc binary.
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet "onnx==$ONNX_VERSION" grpcio-tools
site_packages="$("$work/venv/bin/python" -c 'import onnx, os; print(os.path.dirname(os.path.dirname(onnx.__file__)))')"
proto="$site_packages/onnx/onnx-ml.proto"
test -f "$proto" || { echo "onnx $ONNX_VERSION does not ship $proto" >&2; exit 1; }

cat > "$work/protoc" <<WRAPPER
#!/bin/sh
exec "$work/venv/bin/python" -m grpc_tools.protoc "\$@"
WRAPPER
chmod +x "$work/protoc"
protoc_version="$("$work/protoc" --version)"

# 2. Rust side: a throwaway prost-build driver.
mkdir -p "$work/gen/src" "$work/out"
cat > "$work/gen/Cargo.toml" <<TOML
[package]
name = "onnxgen"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
# cleanup-markdown fences the .proto comments' indented blocks as text so
# rustdoc does not try to run them as doctests.
prost-build = { version = "$PROST_BUILD_VERSION", features = ["cleanup-markdown"] }

[workspace]
TOML
cat > "$work/gen/src/main.rs" <<'RUST'
fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [proto, include, out] = args.as_slice() else {
        eprintln!("usage: onnxgen PROTO INCLUDE_DIR OUT_DIR");
        std::process::exit(2);
    };
    prost_build::Config::new()
        .out_dir(out)
        .compile_protos(&[proto], &[include])
}
RUST
(cd "$work/gen" && cargo build --quiet)
prost_build_resolved="$(cd "$work/gen" && cargo pkgid prost-build | sed 's/.*[@#]//')"
PROTOC="$work/protoc" "$work/gen/target/debug/onnxgen" "$proto" "$site_packages" "$work/out"

# 3. Header, format, install.
{
    echo "// Generated file: do not edit. Regenerate with runtime/tools/gen-onnx-proto.sh."
    echo "//"
    echo "// Source: onnx/onnx-ml.proto (package \`onnx\`, proto2 syntax) from the onnx $ONNX_VERSION"
    echo "// Python wheel, compiled by prost-build $prost_build_resolved with protoc from"
    echo "// grpcio-tools ($protoc_version). onnx-ml.proto is the superset schema (it adds the"
    echo "// classical-ML map/sequence types); onnx.proto differs from it only in comments."
    echo "// The ONNX schema is Apache-2.0 licensed (SPDX-License-Identifier: Apache-2.0)."
    echo
    cat "$work/out/onnx.rs"
} > "$work/onnx.rs"
rustfmt --edition 2021 "$work/onnx.rs"
mkdir -p "$(dirname "$dest")"
cp "$work/onnx.rs" "$dest"
echo "wrote $dest" >&2
