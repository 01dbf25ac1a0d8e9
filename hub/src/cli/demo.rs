//! `flotilla demo`: the newcomer's path in one command.
//!
//! Generates an ONNX model (an MLP with fixed seeds), creates a trust root,
//! packs version 1, fine-tunes one layer into version 2 and packs it, verifies
//! both against the pinned root, shows how many chunks version 2 shares with
//! version 1, and shows that a bundle with one flipped byte is refused. It runs
//! the same library code as the individual commands.

use std::collections::HashSet;
use std::path::PathBuf;

use clap::Args;
use flotilla_protocol::bundle::verify_bundle;
use flotilla_protocol::manifest::Accelerator;
use flotilla_protocol::tuf::repo::Expiries;
use flotilla_protocol::Limits;
use serde::Serialize;

use super::{emit, CliError, Output, Report};
use crate::packer::{pack, PackReport, PackRequest};

#[derive(Debug, Args)]
pub(super) struct DemoArgs {
    /// Working directory (created; default: a new folder under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct DemoReport {
    dir: PathBuf,
    v1: PackReport,
    v2: PackReport,
    v2_chunks_shared_with_v1: usize,
    tampered_bundle_rejected_with: String,
}

impl Report for DemoReport {
    fn text(&self) -> String {
        format!(
            "{}\n{}\nversion 2 re-uses {} of its {} chunks from version 1\nverified both bundles against {}\ntampered bundle refused: {}\nfiles are in {}",
            self.v1.text(),
            self.v2.text(),
            self.v2_chunks_shared_with_v1,
            self.v2.unique_chunks,
            self.dir.join("keys/root.json").display(),
            self.tampered_bundle_rejected_with,
            self.dir.display()
        )
    }
}

/// Layer widths of the demo model: about 32 MiB of float32 weights.
const DEMO_LAYERS: [usize; 5] = [1024, 2048, 2048, 1024, 10];

pub(super) fn run(args: DemoArgs, output: Output) -> Result<(), CliError> {
    let dir = args.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("flotilla-demo-{}", std::process::id()))
    });
    let keys = dir.join("keys");
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError::input(format!("{}: {e}", dir.display())))?;
    let now = crate::now();
    let say = |s: &str| {
        if output == Output::Text {
            eprintln!("==> {s}");
        }
    };

    say("generating an ONNX model (MLP 1024-2048-2048-1024-10, fixed seed)");
    let v1_model = flotilla_runtime::generate::mlp(&DEMO_LAYERS, 7);
    let v2_model =
        flotilla_runtime::generate::with_replaced_initializer(&v1_model, "fc3.weight", 8)
            .map_err(CliError::input)?;
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes)
            .map_err(|e| CliError::input(format!("{}: {e}", p.display())))
            .map(|_| p)
    };
    let m1 = write("model-v1.onnx", &v1_model)?;
    let m2 = write("model-v2.onnx", &v2_model)?;

    say(&format!("creating a trust root in {}", keys.display()));
    crate::keystore::init(&keys, 1, 1, now).map_err(CliError::input)?;

    let request = |model: PathBuf, version: u64, reason: &str| PackRequest {
        model,
        name: "demo-mlp".into(),
        version,
        lineage: flotilla_protocol::manifest::Lineage {
            created_by: "flotilla demo".into(),
            reason: reason.into(),
            source_run: None,
            dataset_digest: None,
            parent_version: version.checked_sub(1).filter(|v| *v > 0),
        },
        tags: [("stage".to_string(), "demo".to_string())].into(),
        accelerator: Accelerator::Cpu,
        min_agent_version: env!("CARGO_PKG_VERSION").into(),
        expiries: Expiries::default(),
    };
    say("packing and signing version 1");
    let v1 = pack(
        &request(m1, 1, "first version"),
        &keys,
        now,
        &dir.join("demo-mlp-1.bundle"),
    )
    .map_err(CliError::input)?;
    say("packing and signing version 2 (last layer retrained)");
    let v2 = pack(
        &request(m2, 2, "retrained last layer"),
        &keys,
        now,
        &dir.join("demo-mlp-2.bundle"),
    )
    .map_err(CliError::input)?;

    let root = std::fs::read(keys.join("root.json")).map_err(CliError::input)?;
    let mut chunk_sets = Vec::new();
    for r in [&v1, &v2] {
        say(&format!("verifying {}", r.bundle.display()));
        let mut set = HashSet::new();
        let file = std::fs::File::open(&r.bundle).map_err(CliError::input)?;
        verify_bundle(
            std::io::BufReader::new(file),
            &root,
            now,
            &Limits::default(),
            |c, _| {
                set.insert(c.digest);
                Ok(())
            },
        )
        .map_err(|e| CliError::untrusted(format!("{}: {e}", r.bundle.display())))?;
        chunk_sets.push(set);
    }
    let shared = chunk_sets[1].intersection(&chunk_sets[0]).count();

    say("flipping one byte in a copy of version 2 and verifying it");
    let mut tampered = std::fs::read(&v2.bundle).map_err(CliError::input)?;
    let pos = tampered.len() / 2;
    tampered[pos] ^= 0x01;
    let tampered_path = write("demo-mlp-2-tampered.bundle", &tampered)?;
    let rejected = match verify_bundle(&tampered[..], &root, now, &Limits::default(), |_, _| Ok(()))
    {
        Ok(_) => {
            return Err(CliError::untrusted(format!(
                "{} verified after tampering",
                tampered_path.display()
            )))
        }
        Err(e) => e.to_string(),
    };

    emit(
        output,
        &DemoReport {
            dir,
            v1,
            v2,
            v2_chunks_shared_with_v1: shared,
            tampered_bundle_rejected_with: rejected,
        },
    );
    Ok(())
}
