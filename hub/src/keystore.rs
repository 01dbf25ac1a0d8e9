//! The keys directory that `flotilla keys init` creates.
//!
//! ```text
//! DIR/root.json                     newest root metadata (public; pin this)
//! DIR/N.root.json                   every root version, for clients to walk
//! DIR/root-keys/root-I.pk8          offline root keys (0600): move them offline
//! DIR/online/ROLE.pk8               online keys for targets, snapshot,
//!                                   timestamp, director (0600): the hub needs these
//! DIR/repository/*.json             the latest published targets/snapshot/timestamp
//! ```
//! Private keys are PKCS#8 v2 DER (`openssl pkey -inform DER` reads them). Files
//! are written to a temporary name and renamed, so a crash never leaves half a
//! key or half a metadata file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flotilla_protocol::time::UtcTime;
use flotilla_protocol::tuf::repo::OnlineKeys;
use flotilla_protocol::tuf::{Envelope, PublicKey, Role, Root, SigningKey, Targets};

/// Why the keys directory could not be created or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `keys init` was pointed at a directory that already holds keys.
    #[error("{0} already holds a root.json; refusing to overwrite existing keys")]
    AlreadyInitialised(PathBuf),
    /// Threshold and key count do not make sense.
    #[error("invalid root key policy: threshold {threshold} of {keys} keys (need 1 <= threshold <= keys <= 32)")]
    BadPolicy {
        /// Threshold asked for.
        threshold: u64,
        /// Keys asked for.
        keys: u64,
    },
    /// A key file is not an Ed25519 PKCS#8 key.
    #[error("{path}: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Metadata in the directory is malformed.
    #[error("{path}: {reason}")]
    BadMetadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeystoreError + '_ {
    move |source| KeystoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `data` to `path` atomically with permissions `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), KeystoreError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// What `keys init` made.
#[derive(Debug, serde::Serialize)]
pub struct InitReport {
    /// The new root.json.
    pub root_path: PathBuf,
    /// Root threshold.
    pub threshold: u64,
    /// Offline root key files.
    pub root_keys: Vec<PathBuf>,
    /// Online key files by role.
    pub online_keys: Vec<PathBuf>,
    /// Root key ids.
    pub root_key_ids: Vec<String>,
    /// Expiry of root.json.
    pub expires: String,
}

/// Online roles and the file names of their keys.
const ONLINE: [(Role, &str); 4] = [
    (Role::Targets, "targets"),
    (Role::Snapshot, "snapshot"),
    (Role::Timestamp, "timestamp"),
    (Role::Director, "director"),
];

/// Root metadata lifetime written by `keys init`.
pub const ROOT_LIFETIME_SECS: i64 = 365 * 86_400;

/// Creates keys and root.json version 1 in `dir`.
pub fn init(
    dir: &Path,
    threshold: u64,
    keys: u64,
    now: UtcTime,
) -> Result<InitReport, KeystoreError> {
    if threshold == 0 || threshold > keys || keys > 32 {
        return Err(KeystoreError::BadPolicy { threshold, keys });
    }
    if dir.join("root.json").exists() {
        return Err(KeystoreError::AlreadyInitialised(dir.to_path_buf()));
    }
    let rng = ring::rand::SystemRandom::new();
    for sub in ["root-keys", "online", "repository"] {
        let p = dir.join(sub);
        fs::create_dir_all(&p).map_err(io(&p))?;
    }
    fs::set_permissions(dir.join("root-keys"), fs::Permissions::from_mode(0o700))
        .map_err(io(dir))?;
    fs::set_permissions(dir.join("online"), fs::Permissions::from_mode(0o700)).map_err(io(dir))?;

    let make = |path: PathBuf| -> Result<(SigningKey, PathBuf), KeystoreError> {
        let doc = SigningKey::generate_pkcs8(&rng).map_err(|e| KeystoreError::BadKey {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &doc, 0o600)?;
        let key = load_key(&path)?;
        Ok((key, path))
    };
    let mut root_keys = Vec::new();
    for i in 1..=keys {
        root_keys.push(make(dir.join("root-keys").join(format!("root-{i}.pk8")))?);
    }
    let mut online = Vec::new();
    for (_, name) in ONLINE {
        online.push(make(dir.join("online").join(format!("{name}.pk8")))?);
    }

    let mut root = Root::new(1, now.plus_secs(ROOT_LIFETIME_SECS));
    let pubs: Vec<&PublicKey> = root_keys.iter().map(|(k, _)| k.public()).collect();
    root.set_role(Role::Root, &pubs, threshold);
    for ((role, _), (key, _)) in ONLINE.iter().zip(&online) {
        root.set_role(*role, &[key.public()], 1);
    }
    let signers: Vec<&SigningKey> = root_keys.iter().map(|(k, _)| k).collect();
    let raw = Envelope::sign(&root, &signers).map_err(|e| KeystoreError::BadMetadata {
        path: dir.join("root.json"),
        reason: e.to_string(),
    })?;
    write_atomic(&dir.join("1.root.json"), &raw, 0o644)?;
    write_atomic(&dir.join("root.json"), &raw, 0o644)?;
    Ok(InitReport {
        root_path: dir.join("root.json"),
        threshold,
        root_key_ids: root_keys
            .iter()
            .map(|(k, _)| k.key_id().0.clone())
            .collect(),
        root_keys: root_keys.into_iter().map(|(_, p)| p).collect(),
        online_keys: online.into_iter().map(|(_, p)| p).collect(),
        expires: root.expires.to_string(),
    })
}

/// Loads one private key file.
pub fn load_key(path: &Path) -> Result<SigningKey, KeystoreError> {
    let doc = fs::read(path).map_err(io(path))?;
    SigningKey::from_pkcs8(&doc).map_err(|e| KeystoreError::BadKey {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Loads the online keys, the only private keys a running hub needs.
pub fn load_online(dir: &Path) -> Result<OnlineKeys, KeystoreError> {
    let k = |name: &str| load_key(&dir.join("online").join(format!("{name}.pk8")));
    Ok(OnlineKeys {
        targets: k("targets")?,
        snapshot: k("snapshot")?,
        timestamp: k("timestamp")?,
        director: k("director")?,
    })
}

/// Every `N.root.json` in `dir`, by version, consecutive from 1.
pub fn root_chain(dir: &Path) -> Result<Vec<(u64, Vec<u8>)>, KeystoreError> {
    let mut out = Vec::new();
    for version in 1u64.. {
        let p = dir.join(format!("{version}.root.json"));
        match fs::read(&p) {
            Ok(raw) => out.push((version, raw)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(io(&p)(e)),
        }
    }
    if out.is_empty() {
        let p = dir.join("1.root.json");
        return Err(KeystoreError::BadMetadata {
            path: p,
            reason: "missing: run `flotilla keys init` first".into(),
        });
    }
    Ok(out)
}

/// The latest published targets body and publication version, if any.
pub fn published(dir: &Path) -> Result<Option<(Targets, u64)>, KeystoreError> {
    let tp = dir.join("repository").join("targets.json");
    let sp = dir.join("repository").join("timestamp.json");
    let (targets, ts) = match (fs::read(&tp), fs::read(&sp)) {
        (Ok(t), Ok(s)) => (t, s),
        (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        (Err(e), _) => return Err(io(&tp)(e)),
        (_, Err(e)) => return Err(io(&sp)(e)),
    };
    let bad = |p: &Path, e: flotilla_protocol::tuf::TufError| KeystoreError::BadMetadata {
        path: p.to_path_buf(),
        reason: e.to_string(),
    };
    let t: Targets = Envelope::parse(Role::Targets, &targets, u64::MAX)
        .and_then(|e| e.body(Role::Targets))
        .map_err(|e| bad(&tp, e))?;
    let s: flotilla_protocol::tuf::Timestamp = Envelope::parse(Role::Timestamp, &ts, u64::MAX)
        .and_then(|e| e.body(Role::Timestamp))
        .map_err(|e| bad(&sp, e))?;
    Ok(Some((t, s.version)))
}

/// Records a publication as the repository's latest.
pub fn save_publication(
    dir: &Path,
    p: &flotilla_protocol::tuf::repo::Publication,
) -> Result<(), KeystoreError> {
    let repo = dir.join("repository");
    fs::create_dir_all(&repo).map_err(io(&repo))?;
    write_atomic(&repo.join("targets.json"), &p.targets, 0o644)?;
    write_atomic(&repo.join("snapshot.json"), &p.snapshot, 0o644)?;
    write_atomic(&repo.join("timestamp.json"), &p.timestamp, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_private_keys_owner_only_and_a_self_signed_root() {
        let dir = tempfile::tempdir().unwrap();
        let r = init(dir.path(), 2, 3, UtcTime(1_900_000_000)).unwrap();
        for p in r.root_keys.iter().chain(&r.online_keys) {
            let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let raw = fs::read(&r.root_path).unwrap();
        let set = flotilla_protocol::tuf::TrustedSet::from_trusted_root(&raw, &Default::default())
            .unwrap();
        assert_eq!(set.root().body.role(Role::Root).unwrap().threshold, 2);
        assert!(load_online(dir.path()).is_ok());
        assert!(matches!(
            init(dir.path(), 2, 3, UtcTime(0)),
            Err(KeystoreError::AlreadyInitialised(_))
        ));
    }

    #[test]
    fn impossible_policies_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            init(dir.path(), 3, 2, UtcTime(0)),
            Err(KeystoreError::BadPolicy { .. })
        ));
        assert!(matches!(
            init(dir.path(), 0, 2, UtcTime(0)),
            Err(KeystoreError::BadPolicy { .. })
        ));
    }
}
