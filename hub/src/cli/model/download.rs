//! `flotilla model download`: fetch a version's model file, hash it on the
//! way, and put it in place only if the digest matches.
//!
//! The expected digest is the hub's record of the version (its `sha256`),
//! which the `x-flotilla-sha256` header of the file answer must repeat. This
//! catches corruption and truncation in transit; it does not defend against a
//! malicious hub (that is what signed bundles and `bundle verify` are for).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use ring::digest::{Context, SHA256};
use serde::Serialize;

use super::super::client::HubClient;
use super::super::progress::Progress;
use super::super::text::human_bytes;
use super::super::{emit, exit, CliError, Output, Report};
use super::syntax::VersionRef;
use crate::api::types::VersionView;

#[derive(Debug, Args)]
pub(crate) struct DownloadArgs {
    /// The version, NAME:VERSION.
    #[arg(value_name = "NAME:VERSION")]
    version: VersionRef,
    /// Where to write the model file (replaced if it exists).
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: PathBuf,
}

/// What `download` prints.
#[derive(Debug, Serialize)]
struct Downloaded {
    name: String,
    version: u64,
    path: PathBuf,
    size: u64,
    sha256: String,
    verified: bool,
}

impl Report for Downloaded {
    fn text(&self) -> String {
        format!(
            "downloaded {}:{} -> {} ({}, sha256 {} verified)",
            self.name,
            self.version,
            self.path.display(),
            human_bytes(self.size),
            self.sha256
        )
    }
}

/// A temporary file that is removed unless it was renamed into place.
struct Partial {
    path: PathBuf,
    keep: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn untrusted(message: String) -> CliError {
    CliError {
        code: exit::UNTRUSTED,
        message,
    }
}

fn partial_path(out: &Path) -> Result<PathBuf, CliError> {
    let name = out
        .file_name()
        .ok_or_else(|| CliError {
            code: exit::USAGE,
            message: format!("-o {}: name a file, not a directory", out.display()),
        })?
        .to_string_lossy();
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Same directory, so the final rename is atomic.
    Ok(dir.join(format!(".{name}.flotilla-partial-{}", std::process::id())))
}

pub(super) fn run(client: &HubClient, a: DownloadArgs, output: Output) -> Result<(), CliError> {
    let v = &a.version;
    let record: VersionView = client
        .get(&v.path(), &[])
        .map_err(|e| client.cli_error(e))?;
    let expected = record.sha256.to_ascii_lowercase();
    let tmp = partial_path(&a.out)?;
    let write_err = |e: std::io::Error| CliError::input(format!("{}: {e}", a.out.display()));

    let mut dl = client
        .download(&format!("{}/file", v.path()))
        .map_err(|e| client.cli_error(e))?;
    if let Some(h) = &dl.sha256 {
        if *h != expected {
            return Err(untrusted(format!(
                "{v}: the hub's file answer claims sha256 {h}, but its record says {expected}; \
                 nothing written"
            )));
        }
    }
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| CliError::input(format!("{}: {e}", tmp.display())))?;
    let mut guard = Partial {
        path: tmp.clone(),
        keep: false,
    };

    let bar = Progress::bytes(
        output,
        &format!("download {v}"),
        dl.length.or(Some(record.size)),
    );
    let mut hash = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut got: u64 = 0;
    let copied = loop {
        let n = match dl.body.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                break Err(CliError {
                    code: exit::UNAVAILABLE,
                    message: format!(
                        "download of {v} from {} broke after {got} of {} bytes: {e}",
                        client.hub(),
                        record.size
                    ),
                })
            }
        };
        hash.update(&buf[..n]);
        if let Err(e) = file.write_all(&buf[..n]) {
            break Err(write_err(e));
        }
        got += n as u64;
        bar.inc(n as u64);
    };
    bar.finish();
    copied?;
    file.sync_all().map_err(write_err)?;
    drop(file);

    let actual = hex::encode(hash.finish().as_ref());
    if actual != expected || got != record.size {
        return Err(untrusted(format!(
            "{v}: downloaded {got} bytes with sha256 {actual}, but the hub recorded {} bytes \
             with sha256 {expected}; nothing written to {}",
            record.size,
            a.out.display()
        )));
    }
    fs::rename(&tmp, &a.out).map_err(write_err)?;
    guard.keep = true;
    emit(
        output,
        &Downloaded {
            name: v.name.clone(),
            version: v.version,
            path: a.out.clone(),
            size: got,
            sha256: actual,
            verified: true,
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_file_sits_beside_the_target() {
        let p = partial_path(Path::new("/data/models/fraud.onnx")).unwrap();
        assert_eq!(p.parent(), Some(Path::new("/data/models")));
        let p = partial_path(Path::new("fraud.onnx")).unwrap();
        assert_eq!(p.parent(), Some(Path::new(".")));
    }

    #[test]
    fn a_directory_is_not_an_output_file() {
        assert_eq!(partial_path(Path::new("/")).unwrap_err().code, exit::USAGE);
    }
}
