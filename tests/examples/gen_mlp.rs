//! Writes a deterministic ONNX MLP of a given size, for benchmarks:
//! `gen_mlp OUT.onnx WIDTH LAYERS SEED` (LAYERS layers of WIDTH x WIDTH float32
//! weights, so about LAYERS * WIDTH^2 * 4 bytes).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = (|| {
        let out = args.first()?.clone();
        let width: usize = args.get(1)?.parse().ok()?;
        let layers: usize = args.get(2)?.parse().ok()?;
        let seed: u64 = args.get(3)?.parse().ok()?;
        Some((out, width, layers, seed))
    })();
    let Some((out, width, layers, seed)) = parsed else {
        eprintln!("usage: gen_mlp OUT.onnx WIDTH LAYERS SEED");
        return ExitCode::from(2);
    };
    let mut dims = vec![width; layers + 1];
    dims.push(10);
    let bytes = flotilla_runtime::generate::mlp(&dims, seed);
    if let Err(e) = std::fs::write(&out, &bytes) {
        eprintln!("writing {out}: {e}");
        return ExitCode::from(3);
    }
    println!("{out}: {} bytes", bytes.len());
    ExitCode::SUCCESS
}
