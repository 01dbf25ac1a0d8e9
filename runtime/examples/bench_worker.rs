//! The Flotilla side of the ONNX Runtime speed benchmark (issue 5, section 4).
//!
//! `runtime/bench/bench.py` starts this worker once per thread count (with
//! `RAYON_NUM_THREADS` set) and drives it over stdin so that its runs interleave
//! with ONNX Runtime's in one process tree. It does not compare or print tables:
//! the driver does.
//!
//! Arguments: model folders laid out like ONNX backend tests (`model.onnx`,
//! `test_data_set_0/input_J.pb`, `test_data_set_0/output_J.pb`). On start it loads
//! every model, runs it once on the recorded inputs and prints
//! `ready NAME MAX_ABS_DIFF` (against the recorded ONNX Runtime outputs). Then, per
//! stdin line `run INDEX COUNT`, it runs model INDEX COUNT times and prints
//! `times NS NS ...`, one wall time per run in nanoseconds.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

use flotilla_runtime::onnx::TensorProto;
use flotilla_runtime::{decode_tensor, Model, Tensor};
use prost::Message;

struct Case {
    model: Model,
    inputs: HashMap<String, Tensor>,
}

fn read_tensor(path: &Path) -> Result<(String, Tensor), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let proto = TensorProto::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    let t = decode_tensor(&proto, None).map_err(|e| e.to_string())?;
    Ok((proto.name().to_owned(), t))
}

fn load(dir: &Path) -> Result<(Case, f32), String> {
    let bytes = std::fs::read(dir.join("model.onnx")).map_err(|e| e.to_string())?;
    let model = Model::load(&bytes, Some(dir)).map_err(|e| e.to_string())?;
    let data = dir.join("test_data_set_0");
    let mut inputs = HashMap::new();
    for (j, spec) in model.inputs().iter().enumerate() {
        let (_, t) = read_tensor(&data.join(format!("input_{j}.pb")))?;
        inputs.insert(spec.name.clone(), t);
    }
    let outs = model.run(inputs.clone()).map_err(|e| e.to_string())?;
    let mut max_diff = 0f32;
    for (j, spec) in model.outputs().iter().enumerate() {
        let (_, want) = read_tensor(&data.join(format!("output_{j}.pb")))?;
        let got = outs.get(&spec.name).ok_or("missing output")?;
        let (g, w) = (
            got.to_f32_vec().map_err(|e| e.to_string())?,
            want.to_f32_vec().map_err(|e| e.to_string())?,
        );
        if g.len() != w.len() {
            return Err(format!(
                "output {j}: {} values, expected {}",
                g.len(),
                w.len()
            ));
        }
        for (a, b) in g.iter().zip(&w) {
            max_diff = max_diff.max((a - b).abs());
        }
    }
    Ok((Case { model, inputs }, max_diff))
}

fn main() -> Result<(), String> {
    let mut cases = Vec::new();
    let mut stdout = std::io::stdout().lock();
    for arg in std::env::args().skip(1) {
        let dir = Path::new(&arg);
        let (case, diff) = load(dir).map_err(|e| format!("{arg}: {e}"))?;
        let name = dir
            .file_name()
            .map_or(arg.clone(), |n| n.to_string_lossy().into());
        writeln!(stdout, "ready {name} {diff:e}").map_err(|e| e.to_string())?;
        cases.push(case);
    }
    stdout.flush().map_err(|e| e.to_string())?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let [_, index, count] = words[..] else {
            return Err(format!("bad command {line:?}"));
        };
        let index: usize = index.parse().map_err(|_| "bad index")?;
        let count: usize = count.parse().map_err(|_| "bad count")?;
        let case = cases.get(index).ok_or("no such model")?;
        let mut times = Vec::with_capacity(count);
        for _ in 0..count {
            let start = Instant::now();
            let outs = case
                .model
                .run(case.inputs.clone())
                .map_err(|e| e.to_string())?;
            times.push(start.elapsed().as_nanos());
            drop(outs);
        }
        let words: Vec<String> = times.iter().map(u128::to_string).collect();
        writeln!(stdout, "times {}", words.join(" ")).map_err(|e| e.to_string())?;
        stdout.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}
