//! Configuration files, as the release binaries read them: the commented example in
//! `deploy/` is accepted by every binary, a value from the file reaches the service unless the
//! environment or a flag says otherwise, and a bad key stops the binary naming the file and key.

use std::path::PathBuf;
use std::process::Command;

use fleet_tests_e2e::fleet::binary;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/fleet.example.toml")
}

/// Runs `bin args` with the environment cleared of the fleet's settings; (success, stderr).
fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(binary(bin));
    for (key, _) in std::env::vars() {
        if key.starts_with("FLEET_") || key.starts_with("AWS_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command.args(args).envs(env.iter().copied());
    let out = command.output().expect("the binary runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn every_binary_takes_the_example_file() {
    let file = example();
    let file = file.to_str().unwrap();
    for (bin, args) in [
        ("fleet-scheduler", vec!["--config", file, "--check-config"]),
        ("fleet-worker", vec!["--config", file, "device-info"]),
        ("fleet-api", vec!["--config", file, "token", "--help"]),
        ("fleetctl", vec!["--config", file, "--help"]),
    ] {
        let (ok, err) = run(bin, &args, &[]);
        assert!(ok, "{bin} {args:?}: {err}");
    }
}

#[test]
fn a_bad_key_or_value_names_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, "[scheduler]\nshard_sise = 8\n").unwrap();
    let (ok, err) = run("fleet-scheduler", &["--config", path.to_str().unwrap(), "--check-config"], &[]);
    assert!(!ok);
    assert!(err.contains("fleet.toml: [scheduler] shard_sise: no such option of fleet-scheduler"), "{err}");
    std::fs::write(&path, "[scheduler]\nplacement = \"fill\"\n").unwrap();
    let (ok, err) = run("fleet-scheduler", &["--config", path.to_str().unwrap(), "--check-config"], &[]);
    assert!(!ok);
    assert!(err.contains("[scheduler] placement = \"fill\""), "{err}");
}

#[test]
fn flags_then_environment_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, "[scheduler]\nshard_size = 7\nqueue_window = 9\n").unwrap();
    let path = path.to_str().unwrap();
    // --check-config prints the settings the scheduler would run with.
    let settings = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["--config", path, "--check-config"];
        all.extend_from_slice(args);
        let (ok, err) = run("fleet-scheduler", &all, env);
        assert!(ok, "{err}");
        err
    };
    let from_file = settings(&[], &[]);
    assert!(from_file.contains("shard_size=7") && from_file.contains("queue_window=9"), "{from_file}");
    let from_env = settings(&[], &[("FLEET_SHARD_SIZE", "5")]);
    assert!(from_env.contains("shard_size=5") && from_env.contains("queue_window=9"), "{from_env}");
    let from_flag = settings(&["--shard-size", "3"], &[("FLEET_SHARD_SIZE", "5")]);
    assert!(from_flag.contains("shard_size=3"), "{from_flag}");
}
