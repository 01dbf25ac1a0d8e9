//! Where the CLI finds its hub and token, and the config file `flotilla login`
//! writes.
//!
//! Resolution, first match wins (for the hub URL and the token separately):
//! 1. the global flags `--hub` / `--token`, or their env vars `FLOTILLA_HUB` /
//!    `FLOTILLA_TOKEN` (clap merges a flag over its env var);
//! 2. the login config file: `$FLOTILLA_CONFIG`, else
//!    `$XDG_CONFIG_HOME/flotilla/config.toml`, else
//!    `$HOME/.config/flotilla/config.toml`;
//! 3. the default hub `http://127.0.0.1:8440`, and no token.
//!
//! The saved token is used only with the saved hub: pointing `--hub` at another
//! hub does not send it the token meant for the first one.
//!
//! Everything here except [`load`] and [`save`] is a pure function of its
//! arguments (flags, an env lookup, the config file's text), so tests never touch
//! the process environment. This module does not talk to the hub.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{exit, CliError};

/// The hub a fresh install talks to: `flotilla-hub serve`'s default address.
pub(crate) const DEFAULT_HUB: &str = "http://127.0.0.1:8440";

/// The global `--hub` / `--token` values, each already merged with its env var.
#[derive(Debug, Clone, Default)]
pub(crate) struct HubFlags {
    /// `--hub` or `FLOTILLA_HUB`.
    pub(crate) hub: Option<String>,
    /// `--token` or `FLOTILLA_TOKEN`.
    pub(crate) token: Option<String>,
}

/// The contents of the login config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct SavedLogin {
    /// Hub base URL.
    #[serde(default)]
    pub(crate) hub: Option<String>,
    /// API token for that hub.
    #[serde(default)]
    pub(crate) token: Option<String>,
}

/// Where a resolved value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// `--hub`/`--token` or `FLOTILLA_HUB`/`FLOTILLA_TOKEN`.
    Flag,
    /// The login config file at this path.
    Config(PathBuf),
    /// The built-in default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("from --hub or FLOTILLA_HUB"),
            Source::Config(p) => write!(f, "from {}", p.display()),
            Source::Default => f.write_str("the default"),
        }
    }
}

/// The hub to talk to and the token to show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connection {
    /// Base URL, `http://host:port[/prefix]`, without a trailing slash.
    // invariant: starts with "http://", does not end with '/'.
    pub(crate) hub: String,
    /// Where `hub` came from.
    pub(crate) hub_source: Source,
    /// Bearer token, if any.
    pub(crate) token: Option<String>,
}

/// The login config file's path from an env lookup; `None` when neither
/// `FLOTILLA_CONFIG`, `XDG_CONFIG_HOME` nor `HOME` gives one.
pub(crate) fn config_path(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = set("FLOTILLA_CONFIG") {
        return Some(p);
    }
    // XDG Base Directory spec: a relative XDG_CONFIG_HOME is invalid and ignored.
    if let Some(xdg) = set("XDG_CONFIG_HOME").filter(|p| p.is_absolute()) {
        return Some(xdg.join("flotilla").join("config.toml"));
    }
    set("HOME").map(|h| h.join(".config").join("flotilla").join("config.toml"))
}

/// Parses the login config file's text.
pub(crate) fn parse_saved(text: &str, path: &Path) -> Result<SavedLogin, CliError> {
    toml::from_str(text).map_err(|e| CliError {
        code: exit::INPUT,
        message: format!(
            "{}: not a valid flotilla config ({}); fix it or run `flotilla login` again",
            path.display(),
            e.message()
        ),
    })
}

/// Checks and normalises a hub URL: plain `http://`, no trailing slash.
pub(crate) fn normalise_hub(url: &str) -> Result<String, CliError> {
    let usage = |message: String| CliError {
        code: exit::USAGE,
        message,
    };
    let url = url.trim().trim_end_matches('/');
    if url.starts_with("https://") {
        return Err(usage(format!(
            "hub URL {url:?}: this build of flotilla speaks plain http:// only; \
             reach a TLS-fronted hub through a tunnel or its plain listener"
        )));
    }
    match url.strip_prefix("http://") {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(url.to_string()),
        _ => Err(usage(format!(
            "hub URL {url:?} is not http://HOST[:PORT], e.g. {DEFAULT_HUB}"
        ))),
    }
}

/// Resolves the connection from the flags and the saved login (with the path it
/// was read from). Pure: reads nothing.
pub(crate) fn resolve(
    flags: &HubFlags,
    saved: Option<(&SavedLogin, &Path)>,
) -> Result<Connection, CliError> {
    let saved_hub = match saved.and_then(|(s, p)| s.hub.as_deref().map(|h| (h, p))) {
        Some((h, p)) => Some((
            normalise_hub(h).map_err(|e| CliError {
                code: exit::INPUT,
                message: format!("{}: {}", p.display(), e.message),
            })?,
            p,
        )),
        None => None,
    };
    let (hub, hub_source) = match (&flags.hub, &saved_hub) {
        (Some(h), _) => (normalise_hub(h)?, Source::Flag),
        (None, Some((h, p))) => (h.clone(), Source::Config(p.to_path_buf())),
        (None, None) => (DEFAULT_HUB.to_string(), Source::Default),
    };
    let token = match &flags.token {
        Some(t) => Some(t.trim().to_string()),
        // The saved token belongs to the saved hub (a config without a hub line
        // means the default hub); never send it elsewhere.
        None => saved.and_then(|(s, _)| {
            let its_hub = saved_hub.as_ref().map_or(DEFAULT_HUB, |(h, _)| h.as_str());
            (its_hub == hub).then(|| s.token.clone()).flatten()
        }),
    }
    .filter(|t| !t.is_empty());
    Ok(Connection {
        hub,
        hub_source,
        token,
    })
}

/// Reads the login config at `path`, if there is one. Warns on stderr when the
/// file is readable by others (it holds a secret).
pub(crate) fn load(path: &Path) -> Result<Option<SavedLogin>, CliError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CliError::input(format!("{}: {e}", path.display()))),
    };
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "warning: {} holds a token but others can read it; run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
    parse_saved(&text, path).map(Some)
}

/// The connection for this run: flags, else the login config, else defaults.
/// Reads the config file only when a flag is missing.
pub(crate) fn connection(flags: &HubFlags) -> Result<Connection, CliError> {
    if flags.hub.is_some() && flags.token.is_some() {
        return resolve(flags, None);
    }
    let Some(path) = config_path(|k| std::env::var_os(k)) else {
        return resolve(flags, None);
    };
    match load(&path)? {
        Some(saved) => resolve(flags, Some((&saved, &path))),
        None => resolve(flags, None),
    }
}

/// A TOML basic string: quoted, with `\`, `"` and control characters escaped.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The config file's text for a hub and token.
pub(crate) fn render(hub: &str, token: &str) -> String {
    format!(
        "# Written by `flotilla login`. It holds a secret: keep it mode 0600.\n\
         hub = {}\ntoken = {}\n",
        toml_string(hub),
        toml_string(token)
    )
}

/// Writes the login config: the file with mode 0600 (written beside and renamed
/// into place, so a crash leaves the old file), its directory created with 0700.
pub(crate) fn save(path: &Path, hub: &str, token: &str) -> Result<(), CliError> {
    let io = |e: std::io::Error, p: &Path| CliError::input(format!("{}: {e}", p.display()));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io(e, dir))?;
    }
    let tmp = dir.join(format!(".config.toml.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask cannot widen 0600, but a pre-set ACL or odd filesystem could;
        // set it explicitly.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(render(hub, token).as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(e, path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(hub: Option<&str>, token: Option<&str>) -> HubFlags {
        HubFlags {
            hub: hub.map(str::to_string),
            token: token.map(str::to_string),
        }
    }

    fn saved(hub: Option<&str>, token: Option<&str>) -> SavedLogin {
        SavedLogin {
            hub: hub.map(str::to_string),
            token: token.map(str::to_string),
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    const CFG: &str = "/home/op/.config/flotilla/config.toml";

    #[test]
    fn flags_win_over_the_saved_login() {
        let s = saved(Some("http://saved:1"), Some("saved-token"));
        let c = resolve(
            &flags(Some("http://flag:2/"), Some("flag-token")),
            Some((&s, Path::new(CFG))),
        )
        .unwrap();
        assert_eq!(c.hub, "http://flag:2");
        assert_eq!(c.hub_source, Source::Flag);
        assert_eq!(c.token.as_deref(), Some("flag-token"));
    }

    #[test]
    fn saved_login_is_used_when_no_flags_are_given() {
        let s = saved(Some("http://saved:1"), Some("saved-token"));
        let c = resolve(&flags(None, None), Some((&s, Path::new(CFG)))).unwrap();
        assert_eq!(c.hub, "http://saved:1");
        assert_eq!(c.hub_source, Source::Config(PathBuf::from(CFG)));
        assert_eq!(c.token.as_deref(), Some("saved-token"));
    }

    #[test]
    fn default_hub_and_no_token_without_flags_or_config() {
        let c = resolve(&flags(None, None), None).unwrap();
        assert_eq!(c.hub, DEFAULT_HUB);
        assert_eq!(c.hub_source, Source::Default);
        assert_eq!(c.token, None);
    }

    #[test]
    fn token_flag_combines_with_the_saved_hub() {
        let s = saved(Some("http://saved:1"), Some("saved-token"));
        let c = resolve(&flags(None, Some("mine")), Some((&s, Path::new(CFG)))).unwrap();
        assert_eq!(c.hub, "http://saved:1");
        assert_eq!(c.token.as_deref(), Some("mine"));
    }

    #[test]
    fn saved_token_is_not_sent_to_a_different_hub() {
        let s = saved(Some("http://saved:1"), Some("saved-token"));
        let c = resolve(
            &flags(Some("http://other:9"), None),
            Some((&s, Path::new(CFG))),
        )
        .unwrap();
        assert_eq!(c.hub, "http://other:9");
        assert_eq!(c.token, None);
    }

    #[test]
    fn saved_token_is_sent_when_the_hub_flag_names_the_saved_hub() {
        let s = saved(Some("http://saved:1/"), Some("saved-token"));
        let c = resolve(
            &flags(Some("http://saved:1"), None),
            Some((&s, Path::new(CFG))),
        )
        .unwrap();
        assert_eq!(c.token.as_deref(), Some("saved-token"));
    }

    #[test]
    fn saved_token_without_a_hub_line_belongs_to_the_default_hub() {
        let s = saved(None, Some("saved-token"));
        let c = resolve(&flags(None, None), Some((&s, Path::new(CFG)))).unwrap();
        assert_eq!(c.hub, DEFAULT_HUB);
        assert_eq!(c.token.as_deref(), Some("saved-token"));
    }

    #[test]
    fn empty_token_counts_as_none() {
        let c = resolve(&flags(None, Some("  ")), None).unwrap();
        assert_eq!(c.token, None);
    }

    #[test]
    fn https_and_malformed_hub_urls_are_usage_errors() {
        for bad in [
            "https://hub:8440",
            "hub:8440",
            "http://",
            "ftp://x",
            "http:///x",
        ] {
            let e = resolve(&flags(Some(bad), None), None).unwrap_err();
            assert_eq!(e.code, exit::USAGE, "{bad}");
        }
    }

    #[test]
    fn a_bad_hub_in_the_config_file_names_the_file() {
        let s = saved(Some("nonsense"), None);
        let e = resolve(&flags(None, None), Some((&s, Path::new(CFG)))).unwrap_err();
        assert_eq!(e.code, exit::INPUT);
        assert!(e.message.contains(CFG), "{}", e.message);
    }

    #[test]
    fn config_path_prefers_flotilla_config_then_xdg_then_home() {
        let all = [
            ("FLOTILLA_CONFIG", "/tmp/c.toml"),
            ("XDG_CONFIG_HOME", "/xdg"),
            ("HOME", "/home/op"),
        ];
        assert_eq!(config_path(env(&all)), Some(PathBuf::from("/tmp/c.toml")));
        assert_eq!(
            config_path(env(&all[1..])),
            Some(PathBuf::from("/xdg/flotilla/config.toml"))
        );
        assert_eq!(config_path(env(&all[2..])), Some(PathBuf::from(CFG)));
        assert_eq!(config_path(env(&[])), None);
    }

    #[test]
    fn relative_or_empty_xdg_config_home_is_ignored() {
        let vars = [("XDG_CONFIG_HOME", "rel/dir"), ("HOME", "/home/op")];
        assert_eq!(config_path(env(&vars)), Some(PathBuf::from(CFG)));
        let vars = [("FLOTILLA_CONFIG", ""), ("HOME", "/home/op")];
        assert_eq!(config_path(env(&vars)), Some(PathBuf::from(CFG)));
    }

    #[test]
    fn rendered_config_parses_back_even_with_quotes_and_backslashes() {
        let token = "fl_a\"b\\c\u{1}";
        let text = render("http://h:1", token);
        let s = parse_saved(&text, Path::new(CFG)).unwrap();
        assert_eq!(s, saved(Some("http://h:1"), Some(token)));
    }

    #[test]
    fn a_malformed_config_file_is_an_input_error_naming_it() {
        let e = parse_saved("hub = ", Path::new(CFG)).unwrap_err();
        assert_eq!(e.code, exit::INPUT);
        assert!(e.message.contains(CFG));
    }

    #[test]
    fn config_file_is_written_0600_in_a_0700_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("flotilla").join("config.toml");
        save(&path, "http://h:1", "secret").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back, saved(Some("http://h:1"), Some("secret")));
    }

    #[test]
    fn saving_over_a_world_readable_config_leaves_it_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.toml");
        fs::write(&path, "token = \"old\"\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        save(&path, "http://h:1", "new").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_missing_config_file_is_not_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(load(&tmp.path().join("none.toml")).unwrap(), None);
    }
}
