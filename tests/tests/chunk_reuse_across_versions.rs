//! Content-defined chunking pays off across model versions: a new version of an
//! ONNX model that changes one tensor shares almost all chunks with the old one,
//! so an agent fetches only a small part of it.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use flotilla_protocol::chunking::chunk_bytes;
use flotilla_runtime::generate::{mlp, with_replaced_initializer};

/// A 24-layer MLP of width 512: about 24 MiB of float32 weights in 48 tensors.
fn model() -> Vec<u8> {
    let mut layers = vec![512usize; 25];
    layers.push(10);
    mlp(&layers, 11)
}

fn reuse(old: &[u8], new: &[u8]) -> (usize, usize, u64, u64) {
    let old: HashSet<_> = chunk_bytes(old).into_iter().map(|c| c.digest).collect();
    let new = chunk_bytes(new);
    let shared: Vec<_> = new.iter().filter(|c| old.contains(&c.digest)).collect();
    let shared_bytes: u64 = shared.iter().map(|c| u64::from(c.len)).sum();
    let total_bytes: u64 = new.iter().map(|c| u64::from(c.len)).sum();
    (shared.len(), new.len(), shared_bytes, total_bytes)
}

#[test]
fn changing_one_middle_layer_reuses_at_least_90_percent_of_chunks() {
    let v1 = model();
    assert!(v1.len() >= 20 << 20, "model is {} bytes", v1.len());
    let v2 = with_replaced_initializer(&v1, "fc12.weight", 99).unwrap();
    assert_ne!(v1, v2);
    let (shared, total, shared_bytes, total_bytes) = reuse(&v1, &v2);
    eprintln!("middle layer: {shared}/{total} chunks, {shared_bytes}/{total_bytes} bytes shared");
    assert!(
        shared * 10 >= total * 9,
        "{shared} of {total} chunks shared"
    );
    // The bytes to fetch are about the changed tensor (1 MiB) plus chunk edges.
    assert!(
        total_bytes - shared_bytes <= 4 << 20,
        "{} bytes to fetch",
        total_bytes - shared_bytes
    );
}

#[test]
fn changing_the_output_layer_reuses_at_least_90_percent_of_chunks() {
    let v1 = model();
    let last = "fc24.weight";
    let v2 = with_replaced_initializer(&v1, last, 5).unwrap();
    let (shared, total, ..) = reuse(&v1, &v2);
    eprintln!("output layer: {shared}/{total} chunks shared");
    assert!(
        shared * 10 >= total * 9,
        "{shared} of {total} chunks shared"
    );
}

#[test]
fn unrelated_models_share_no_chunks() {
    // The other side of the property: sharing comes from content, not luck.
    let a = model();
    let mut layers = vec![512usize; 25];
    layers.push(10);
    let b = mlp(&layers, 12);
    let (shared, total, ..) = reuse(&a, &b);
    assert!(
        shared <= 1,
        "{shared} of {total} chunks shared between unrelated models"
    );
}
