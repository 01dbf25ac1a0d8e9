//! The `flotilla-hub` process as an operator runs it: configuration errors,
//! first start, graceful shutdown.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

#[test]
fn a_bad_config_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hub.toml");
    for (text, expect) in [
        (
            "data_dir = \"/tmp/x\"\n[api]\nlisten = \"not-an-address\"\n",
            "api.listen",
        ),
        ("data_dir = \"/tmp/x\"\nlisen = 1\n", "lisen"),
        ("[api\n", "line 1"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_flotilla-hub"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(expect), "{err}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_flotilla-hub"))
        .args(["serve"])
        .env_remove("FLOTILLA_HUB_DATA_DIR")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("data_dir is not set"));
}

#[test]
fn the_hub_creates_keys_and_an_admin_token_once_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let hub = support::HubProcess::start(dir.path());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("admin-token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(dir.path().join("keys/root.json").exists());
    let admin = hub.admin.clone();
    let pid = hub.child.id().to_string();
    let mut hub = hub;
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = hub.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean shutdown");

    // A restart keeps keys and the admin token: no new secrets appear.
    let again = support::HubProcess::start(dir.path());
    assert_eq!(again.admin, admin);
    let (s, me) = again.client(&admin).get("/api/v1/whoami");
    assert_eq!((s, me["role"].as_str()), (200, Some("admin")));
}
