//! The container deployment, `docker-compose.yml`, as Compose itself reads it: checked by
//! `deploy/compose-check.sh` with no Docker daemon and no images. Every service of the fleet
//! is there, the workers reserve a GPU, and a broken file is refused rather than waved through.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// The check installs Compose with apt on first use; one run at a time keeps apt's lock free.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the tests crate sits in the repository")
}

/// Runs `deploy/compose-check.sh` with `args`.
fn compose_check(args: &[&str]) -> Output {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    Command::new(repo().join("deploy/compose-check.sh")).args(args).output().expect("deploy/compose-check.sh starts")
}

/// Stdout of a run that must have succeeded; otherwise panics with what Compose said.
fn success(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("compose prints UTF-8")
}

/// Where a line's key starts: its indent, plus two for a list item's `- `.
fn key_column(line: &str) -> usize {
    let indent = line.len() - line.trim_start().len();
    indent + if line.trim_start().starts_with("- ") { 2 } else { 0 }
}

/// The lines nested under `key:` where it is a key of `yaml`'s outermost mapping (also as
/// `- key:`, a list item's first key): those indented deeper than the key, plus list items at
/// the key's own indent, which is how PyYAML (Compose 1.x) writes a list under a key.
fn block<'a>(yaml: &'a str, key: &str) -> Option<Vec<&'a str>> {
    let outermost = yaml.lines().filter(|l| !l.trim().is_empty()).map(key_column).min()?;
    let mut lines = yaml.lines();
    lines
        .by_ref()
        .find(|line| key_column(line) == outermost && line.trim().trim_start_matches("- ") == format!("{key}:"))?;
    let nested = lines
        .take_while(|line| {
            let indent = line.len() - line.trim_start().len();
            line.trim().is_empty() || indent > outermost || (indent == outermost && line.trim_start().starts_with("- "))
        })
        .collect();
    Some(nested)
}

/// The text under a path of keys, each a key of the previous one's mapping.
fn section(yaml: &str, path: &[&str]) -> String {
    path.iter().fold(yaml.to_string(), |text, key| {
        block(&text, key).unwrap_or_else(|| panic!("no `{key}` on the path {path:?} in:\n{yaml}")).join("\n")
    })
}

#[test]
fn the_compose_file_runs_every_part_of_the_fleet() {
    let services = success(compose_check(&[]), "deploy/compose-check.sh");
    let services: BTreeSet<&str> = services.lines().map(str::trim).filter(|s| !s.is_empty()).collect();
    for expected in ["rabbitmq", "redis", "garage", "garage-init", "scheduler", "model-publish", "worker"] {
        assert!(services.contains(expected), "service {expected} missing; Compose sees {services:?}");
    }
}

#[test]
fn workers_reserve_a_gpu_and_run_as_two_replicas() {
    let config = success(compose_check(&["--print-config"]), "deploy/compose-check.sh --print-config");
    let deploy = section(&config, &["services", "worker", "deploy"]);
    assert!(deploy.lines().any(|l| l.trim() == "replicas: 2"), "worker replicas:\n{deploy}");

    let devices = section(&deploy, &["resources", "reservations", "devices"]);
    assert!(
        devices.lines().any(|l| l.trim().trim_start_matches("- ") == "driver: nvidia"),
        "worker device reservation has no nvidia driver:\n{devices}"
    );
    let capabilities = section(&devices, &["capabilities"]);
    assert!(capabilities.lines().any(|l| l.trim() == "- gpu"), "worker device reservation lacks gpu:\n{devices}");

    // The scheduler is the control plane: it never asks for a GPU.
    let scheduler = section(&config, &["services", "scheduler"]);
    assert!(!scheduler.contains("capabilities:"), "the scheduler reserves a device:\n{scheduler}");
}

#[test]
fn a_broken_compose_file_is_refused() {
    let original = std::fs::read_to_string(repo().join("docker-compose.yml")).expect("docker-compose.yml is readable");
    let cases = [
        // A misspelt key would otherwise be ignored and the service run without its image.
        ("    image: redis:7.0\n", "    imagee: redis:7.0\n", "imagee"),
        // A start condition Compose does not know would otherwise start the workers too early.
        ("condition: service_completed_successfully", "condition: service_finished", "service_finished"),
    ];
    let dir = tempfile::tempdir().expect("temporary folder");
    for (from, to, named) in cases {
        let broken = original.replacen(from, to, 1);
        assert_ne!(broken, original, "`{}` is no longer in docker-compose.yml: update this test", from.trim());
        let file = dir.path().join("docker-compose.yml");
        std::fs::write(&file, broken).expect("the broken copy is written");

        let out = compose_check(&[file.to_str().expect("temporary path is UTF-8")]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a compose file with `{}` was accepted", to.trim());
        assert!(said.contains(named), "the refusal does not name `{named}`:\n{said}");
    }
}
