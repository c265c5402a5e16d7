//! The file store against hostile folders: symbolic links, names that are not UTF-8, and
//! temp files a killed writer left behind.

use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime};

use serde_json::json;
use vss_tests::{Workspace, target};

fn workspace() -> Workspace {
    let ws = Workspace::new();
    ws.config("source: { file: { dir: src } }\ntargets:\n  T: { store: { file: { dir: out } }, delete: true }\n");
    ws.secret("src", "app/db", json!({"password": "p"}));
    ws
}

#[test]
fn a_symlinked_target_folder_is_never_written_through() {
    let ws = workspace();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ws.path().join("out")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), ws.path().join("out/app")).unwrap();
    let run = ws.pipeline(&[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let t = target(&run.json(), "T").clone();
    assert!(t["error"].as_str().unwrap().contains("is a symbolic link"), "{t}");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0, "nothing written there");
}

#[test]
fn a_symlink_in_a_source_fails_the_read_and_deletes_nothing() {
    let ws = workspace();
    assert_eq!(ws.pipeline(&[]).code, 0);
    let outside = ws.write("outside/secret.json", r#"{"stolen": "x"}"#);
    std::os::unix::fs::symlink(&outside, ws.path().join("src/leak.json")).unwrap();
    std::fs::remove_file(ws.path().join("src/app/db.json")).unwrap();
    let run = ws.pipeline(&[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let t = target(&run.json(), "T").clone();
    assert!(t["error"].as_str().unwrap().contains("leak.json is a symbolic link"), "{t}");
    assert!(ws.read_secret("out", "app/db").is_some(), "a failed source read deletes nothing");
    assert!(ws.read_secret("out", "leak").is_none());
}

#[test]
fn a_name_that_is_not_utf8_is_an_error_not_a_silent_skip() {
    let ws = workspace();
    let name = std::ffi::OsStr::from_bytes(b"bad-\xff.json");
    std::fs::write(ws.path().join("src").join(name), "{}").unwrap();
    let run = ws.pipeline(&[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let t = target(&run.json(), "T").clone();
    assert!(t["error"].as_str().unwrap().contains("not UTF-8"), "{t}");
}

#[test]
fn temp_files_left_by_a_killed_writer_are_removed() {
    let ws = workspace();
    let stale = ws.write("out/app/.vss-stale", "plaintext");
    let file = std::fs::File::options().write(true).open(&stale).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
    let fresh = ws.write("out/app/.vss-fresh", "a write in progress");
    let ledger_stale = ws.write(".vss/state/targets/.vss-old", "x");
    let file = std::fs::File::options().write(true).open(&ledger_stale).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
    let run = ws.pipeline(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!stale.exists(), "an hour-old temp file is gone");
    assert!(fresh.exists(), "a recent one may be another writer's");
    assert!(!ledger_stale.exists());
}
