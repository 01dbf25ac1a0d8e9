//! The hub's configuration: a TOML file, environment overrides, then flags,
//! validated into [`HubConfig`].
//!
//! Parsing is a pure function of the file text, an environment lookup and the
//! flags, so it is tested without touching the process environment (linkerd's
//! `env.rs` habit). Unknown keys are errors: a typo never silently falls back to
//! a default.
//!
//! ```toml
//! data_dir = "/var/lib/flotilla-hub"
//! keys_dir = "/etc/flotilla/keys"      # default: DATA_DIR/keys
//! [api]
//! listen = "127.0.0.1:8440"           # port 0 picks a free port
//! max_json_bytes = 1048576
//! max_upload_bytes = 8589934592         # registration holds a model in memory once
//! max_pending_uploads = 256
//! ```
//! Environment: `FLOTILLA_HUB_DATA_DIR`, `FLOTILLA_HUB_KEYS_DIR`,
//! `FLOTILLA_HUB_API_LISTEN`, `FLOTILLA_HUB_MAX_UPLOAD_BYTES`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// A config that cannot be used; the message names the key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Validated hub configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Where the database, chunks, uploads and (by default) keys live.
    pub data_dir: PathBuf,
    /// The keys directory (`flotilla keys init` layout).
    pub keys_dir: PathBuf,
    /// REST API listen address.
    pub api_listen: SocketAddr,
    /// Largest JSON request body.
    pub max_json_bytes: usize,
    /// Largest single upload PATCH body.
    pub max_patch_bytes: usize,
    /// Largest file one upload may declare; also the memory one registration may use.
    pub max_upload_bytes: u64,
    /// Most uploads in progress at once.
    pub max_pending_uploads: usize,
}

/// Default largest upload. Registration reads a model (and a reference
/// dataset) into memory once, so this is also the hub's per-registration memory
/// budget: raise it only on hubs with the memory to match.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 8 * 1024 * 1024 * 1024;

/// Default API address.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8440";
/// Largest upload PATCH body (the CLI sends 8 MiB).
pub const MAX_PATCH_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    keys_dir: Option<PathBuf>,
    #[serde(default)]
    api: RawApi,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<String>,
    max_json_bytes: Option<usize>,
    max_upload_bytes: Option<u64>,
    max_pending_uploads: Option<usize>,
}

/// Command-line overrides (highest precedence).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--api-listen`.
    pub api_listen: Option<String>,
}

impl HubConfig {
    /// Builds the config from the TOML text (if any), an environment lookup and flags.
    pub fn resolve(
        toml_text: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &Flags,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = match toml_text {
            Some(t) => toml::from_str(t).map_err(|e| {
                let line = e
                    .span()
                    .map_or(0, |s| t[..s.start.min(t.len())].matches('\n').count() + 1);
                ConfigError(format!(
                    "line {line}: {}",
                    e.message().split_whitespace().collect::<Vec<_>>().join(" ")
                ))
            })?,
            None => RawConfig::default(),
        };
        let data_dir = flags
            .data_dir
            .clone()
            .or_else(|| env("FLOTILLA_HUB_DATA_DIR").map(PathBuf::from))
            .or(raw.data_dir)
            .ok_or_else(|| ConfigError("data_dir is not set (use --data-dir, FLOTILLA_HUB_DATA_DIR or data_dir in the config file)".into()))?;
        let keys_dir = env("FLOTILLA_HUB_KEYS_DIR")
            .map(PathBuf::from)
            .or(raw.keys_dir)
            .unwrap_or_else(|| data_dir.join("keys"));
        let listen = flags
            .api_listen
            .clone()
            .or_else(|| env("FLOTILLA_HUB_API_LISTEN"))
            .or(raw.api.listen)
            .unwrap_or_else(|| DEFAULT_API_LISTEN.into());
        let api_listen: SocketAddr = listen.parse().map_err(|_| {
            ConfigError(format!(
                "api.listen {listen:?} is not an address like 127.0.0.1:8440"
            ))
        })?;
        let max_upload_bytes = match env("FLOTILLA_HUB_MAX_UPLOAD_BYTES") {
            Some(v) => v.parse().map_err(|_| {
                ConfigError(format!(
                    "FLOTILLA_HUB_MAX_UPLOAD_BYTES {v:?} is not a number"
                ))
            })?,
            None => raw.api.max_upload_bytes.unwrap_or(DEFAULT_MAX_UPLOAD_BYTES),
        };
        let max_json_bytes = raw.api.max_json_bytes.unwrap_or(1024 * 1024);
        if !(1024..=64 * 1024 * 1024).contains(&max_json_bytes) {
            return Err(ConfigError(format!(
                "api.max_json_bytes {max_json_bytes} must be between 1 KiB and 64 MiB"
            )));
        }
        if max_upload_bytes == 0 {
            return Err(ConfigError("api.max_upload_bytes must be positive".into()));
        }
        let max_pending_uploads = raw.api.max_pending_uploads.unwrap_or(256);
        if max_pending_uploads == 0 {
            return Err(ConfigError(
                "api.max_pending_uploads must be positive".into(),
            ));
        }
        Ok(Self {
            data_dir,
            keys_dir,
            api_listen,
            max_json_bytes,
            max_patch_bytes: MAX_PATCH_BYTES,
            max_upload_bytes,
            max_pending_uploads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn flags_beat_environment_beat_file() {
        let file = "data_dir = \"/file\"\n[api]\nlisten = \"127.0.0.1:1\"\n";
        let env = |k: &str| (k == "FLOTILLA_HUB_API_LISTEN").then(|| "127.0.0.1:2".to_string());
        let c = HubConfig::resolve(Some(file), &env, &Flags::default()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/file"));
        assert_eq!(c.api_listen.port(), 2);
        assert_eq!(c.keys_dir, PathBuf::from("/file/keys"));
        let flags = Flags {
            data_dir: Some("/flag".into()),
            api_listen: Some("127.0.0.1:3".into()),
        };
        let c = HubConfig::resolve(Some(file), &env, &flags).unwrap();
        assert_eq!(
            (c.data_dir, c.api_listen.port()),
            (PathBuf::from("/flag"), 3)
        );
    }

    #[test]
    fn defaults_need_only_a_data_dir() {
        let flags = Flags {
            data_dir: Some("/d".into()),
            ..Flags::default()
        };
        let c = HubConfig::resolve(None, &no_env, &flags).unwrap();
        assert_eq!(c.api_listen.to_string(), DEFAULT_API_LISTEN);
        assert!(HubConfig::resolve(None, &no_env, &Flags::default()).is_err());
    }

    #[test]
    fn bad_configs_get_one_line_naming_the_key() {
        let flags = Flags {
            data_dir: Some("/d".into()),
            ..Flags::default()
        };
        let e =
            HubConfig::resolve(Some("[api]\nlisten = \"nowhere\""), &no_env, &flags).unwrap_err();
        assert!(e.to_string().contains("api.listen"), "{e}");
        let e = HubConfig::resolve(Some("[api]\nlistn = \"x\""), &no_env, &flags).unwrap_err();
        assert!(e.to_string().contains("listn"), "{e}");
        let e = HubConfig::resolve(Some("data_dir = ["), &no_env, &flags).unwrap_err();
        assert!(!e.to_string().contains('\n'), "{e}");
        let env = |k: &str| (k == "FLOTILLA_HUB_MAX_UPLOAD_BYTES").then(|| "lots".to_string());
        assert!(HubConfig::resolve(None, &env, &flags).is_err());
    }
}
