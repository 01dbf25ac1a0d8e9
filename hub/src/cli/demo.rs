//! `flotilla demo`: the newcomer's path in one command.
//!
//! Generates an ONNX model (an MLP with fixed seeds), creates a trust root,
//! packs version 1, fine-tunes one layer into version 2 and packs it, verifies
//! both against the pinned root, shows how many chunks version 2 shares with
//! version 1, and shows that a bundle with one flipped byte is refused. It runs
//! the same library code as the individual commands.
//!
//! Then it starts an embedded hub (its own redb store and chunk store, on a free
//! loopback port), registers both versions through the REST API exactly as
//! `flotilla model register` does, checks the registry's signed targets with the
//! TUF client, downloads version 2 back, and verifies the audit chain.
//!
//! Last, the fleet (`demo_fleet`): agents enrol with that hub over QUIC, pull
//! and activate version 1, score requests, take a 90/10 canary of version 2,
//! and their telemetry comes back to the hub over its embedded MQTT broker.

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
    hub: HubDemo,
}

/// What the embedded-hub part of the demo did.
#[derive(Debug, Serialize)]
struct HubDemo {
    url: String,
    registered: Vec<crate::api::types::VersionView>,
    targets_version: u64,
    download_matches: bool,
    audit: crate::api::types::AuditVerification,
    fleet: super::demo_fleet::FleetDemo,
}

impl Report for DemoReport {
    fn text(&self) -> String {
        let mut s = format!(
            "{}\n{}\nversion 2 re-uses {} of its {} chunks from version 1\nverified both bundles against {}\ntampered bundle refused: {}\n",
            self.v1.text(),
            self.v2.text(),
            self.v2_chunks_shared_with_v1,
            self.v2.unique_chunks,
            self.dir.join("keys/root.json").display(),
            self.tampered_bundle_rejected_with,
        );
        s += &format!("embedded hub at {}:\n", self.hub.url);
        for v in &self.hub.registered {
            s += &format!(
                "  registered {}:{} ({} bytes, {} chunks, {} already stored), signed as {}\n",
                v.name, v.version, v.size, v.chunks, v.chunks_reused, v.target
            );
        }
        s += &format!(
            "  trust chain checked by the TUF client: targets v{}; download of version 2 {}; audit log: {} entries, {}\n",
            self.hub.targets_version,
            if self.hub.download_matches { "matches" } else { "DOES NOT MATCH" },
            self.hub.audit.entries,
            if self.hub.audit.ok { "chain intact" } else { "CHAIN BROKEN" }
        );
        s += &self.hub.fleet.text();
        s += &format!("files are in {}", self.dir.display());
        s
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

    say("starting an embedded hub and registering both versions through its API");
    let hub = hub_demo(
        &dir,
        &[&dir.join("model-v1.onnx"), &dir.join("model-v2.onnx")],
        &v2_model,
        &say,
    )?;
    if !hub.download_matches || !hub.audit.ok {
        return Err(CliError::untrusted(
            "the embedded hub returned a wrong download or a broken audit chain",
        ));
    }
    emit(
        output,
        &DemoReport {
            dir,
            v1,
            v2,
            v2_chunks_shared_with_v1: shared,
            tampered_bundle_rejected_with: rejected,
            hub,
        },
    );
    Ok(())
}

/// A whole response body (the demo's documents and model are small).
fn bytes(client: &crate::cli::client::HubClient, path: &str) -> Result<Vec<u8>, CliError> {
    use std::io::Read;
    let d = client.download(path).map_err(|e| client.cli_error(e))?;
    let mut out = Vec::new();
    d.body
        .take(256 << 20)
        .read_to_end(&mut out)
        .map_err(CliError::input)?;
    Ok(out)
}

/// Runs an embedded hub in `dir/hub`, registers `models` in order through the
/// REST API, and checks what comes back.
fn hub_demo(
    dir: &std::path::Path,
    models: &[&std::path::Path],
    last_model: &[u8],
    say: &dyn Fn(&str),
) -> Result<HubDemo, CliError> {
    use crate::api::types::{AuditVerification, LineageBody, RegisterVersion, VersionView};
    use crate::cli::client::HubClient;
    use crate::cli::credentials::{Connection, Source};
    use crate::config::{Flags, HubConfig};

    let config = HubConfig::resolve(
        None,
        &|_| None,
        &Flags {
            data_dir: Some(dir.join("hub")),
            api_listen: Some("127.0.0.1:0".into()),
            sync_listen: Some("127.0.0.1:0".into()),
            mqtt_listen: Some("127.0.0.1:0".into()),
            ..Flags::default()
        },
    )
    .map_err(CliError::input)?;
    let runtime = tokio::runtime::Runtime::new().map_err(CliError::input)?;
    let hub = runtime
        .block_on(crate::server::start(&config))
        .map_err(|e| CliError::input(format!("{e:#}")))?;
    let url = format!("http://{}", hub.api_addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = runtime.spawn(hub.serve(async {
        let _ = stopped.await;
    }));
    let token =
        std::fs::read_to_string(config.data_dir.join("admin-token")).map_err(CliError::input)?;
    let client = HubClient::new(Connection {
        hub: url.clone(),
        hub_source: Source::Flag,
        token: Some(token.trim().into()),
    });

    let result = (|| -> Result<HubDemo, CliError> {
        let mut registered: Vec<VersionView> = Vec::new();
        for (i, path) in models.iter().enumerate() {
            let upload = crate::cli::upload::upload_path(&client, path, &mut |_| {})?;
            let body = RegisterVersion {
                upload: upload.id,
                dataset_upload: None,
                description: "flotilla demo".into(),
                tags: [("stage".to_string(), "demo".to_string())].into(),
                metrics: [("accuracy".to_string(), 0.9 + i as f64 / 100.0)].into(),
                lineage: LineageBody {
                    parent_version: registered.last().map(|v| v.version),
                    ..LineageBody::default()
                },
                reason: "flotilla demo".into(),
            };
            let v: VersionView = client
                .send_slow("/api/v1/models/demo-mlp/versions", &body)
                .map_err(|e| client.cli_error(e))?;
            registered.push(v);
        }
        // The registry's metadata, checked by the same TUF client agents use.
        let fetch = |doc: &str| bytes(&client, &format!("/api/v1/trust/{doc}")).ok();
        let root =
            fetch("root.json").ok_or_else(|| CliError::untrusted("the hub serves no root.json"))?;
        let trusted =
            flotilla_protocol::tuf::TrustedSet::from_trusted_root(&root, &Limits::default())
                .map_err(CliError::untrusted)?;
        let trusted =
            flotilla_protocol::tuf::Updater::run(trusted, crate::now(), Limits::default(), |f| {
                match f {
                    flotilla_protocol::tuf::Fetch::Root { version, .. } => {
                        fetch(&format!("{version}.root.json"))
                    }
                    flotilla_protocol::tuf::Fetch::Timestamp { .. } => fetch("timestamp.json"),
                    flotilla_protocol::tuf::Fetch::Snapshot { .. } => fetch("snapshot.json"),
                    flotilla_protocol::tuf::Fetch::Targets { .. } => fetch("targets.json"),
                }
            })
            .map_err(CliError::untrusted)?;
        for v in &registered {
            let manifest = bytes(
                &client,
                &format!("/api/v1/models/demo-mlp/versions/{}/manifest", v.version),
            )?;
            trusted
                .verify_target(&v.target, &manifest)
                .map_err(CliError::untrusted)?;
        }
        let last = registered.last().map_or(0, |v| v.version);
        let download = bytes(
            &client,
            &format!("/api/v1/models/demo-mlp/versions/{last}/file"),
        )?;
        let audit: AuditVerification = client
            .get("/api/v1/audit/verify", &[])
            .map_err(|e| client.cli_error(e))?;
        let fleet = super::demo_fleet::run(&client, dir, say, DEMO_LAYERS[0])?;
        Ok(HubDemo {
            fleet,
            url: url.clone(),
            targets_version: trusted.targets().map_or(0, |t| t.body.version),
            registered,
            download_matches: download == last_model,
            audit,
        })
    })();
    let _ = stop.send(());
    let _ = runtime.block_on(serving);
    result
}
