//! Layered configuration for every binary: a TOML file, then the environment, then flags.
//!
//! Each binary names its section of the file (`[scheduler]`, `[worker]`, `[api]`,
//! `[fleetctl]`, ...; `deploy/fleet.example.toml` shows them all, commented). A key is an
//! option's long name with `_` for `-` (`shard_size` for `--shard-size`), anywhere in the
//! binary's commands. [`layer`] reads the file with the `config` crate and, for every key
//! whose environment variable is unset, sets it from the file: clap then takes a flag before
//! the environment and the environment before the file. Every value is checked with the
//! option's own parser first, so a bad file stops the binary at start with the file, the
//! section and the key named. The file is `--config PATH` or `FLEET_CONFIG`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or is not TOML.
    #[error("{}: {reason}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// A key no option of this binary has.
    #[error("{}: [{section}] {key}: no such option of {binary} (its keys: {known})", file.display())]
    UnknownKey {
        /// The file.
        file: PathBuf,
        /// The section.
        section: String,
        /// The key.
        key: String,
        /// The binary.
        binary: String,
        /// The keys it has.
        known: String,
    },
    /// A value the option's parser refuses.
    #[error("{}: [{section}] {key} = {value:?}: {reason}", file.display())]
    Value {
        /// The file.
        file: PathBuf,
        /// The section.
        section: String,
        /// The key.
        key: String,
        /// The value as written.
        value: String,
        /// What the parser said.
        reason: String,
    },
}

/// The file named by `--config PATH` / `--config=PATH` in `args`, else by `FLEET_CONFIG`.
pub fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("FLEET_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Every option of `command` and its subcommands that can come from the environment:
/// (key, environment variable, the option, the command it belongs to).
fn options(command: &clap::Command) -> Vec<(String, String, clap::Arg, clap::Command)> {
    let mut out = Vec::new();
    for arg in command.get_arguments() {
        if let (Some(long), Some(env)) = (arg.get_long().filter(|l| *l != "config"), arg.get_env()) {
            out.push((long.replace('-', "_"), env.to_string_lossy().into_owned(), arg.clone(), command.clone()));
        }
    }
    for sub in command.get_subcommands() {
        for option in options(sub) {
            if !out.iter().any(|(k, ..)| *k == option.0) {
                out.push(option);
            }
        }
    }
    out
}

/// Keys every section takes that are not options: the object store (read from the
/// environment by the store crate) and the log filter.
pub const SHARED_KEYS: [(&str, &str); 6] = [
    ("s3_endpoint", "FLEET_S3_ENDPOINT"),
    ("s3_region", "FLEET_S3_REGION"),
    ("s3_bucket", "FLEET_S3_BUCKET"),
    ("s3_access_key", "AWS_ACCESS_KEY_ID"),
    ("s3_secret_key", "AWS_SECRET_ACCESS_KEY"),
    ("log", "RUST_LOG"),
];

/// The text of a TOML value as an option takes it (arrays joined by commas).
fn text(value: config::Value) -> Result<String, String> {
    match value.kind {
        config::ValueKind::Array(items) => {
            items.into_iter().map(text).collect::<Result<Vec<_>, _>>().map(|parts| parts.join(","))
        }
        config::ValueKind::Table(_) => Err("a table where a value is expected".into()),
        _ => value.into_string().map_err(|e| e.to_string()),
    }
}

/// Values of `section` in `file` for the options of `command`: (environment variable, value),
/// each checked with its option's parser.
pub fn read(command: &clap::Command, file: &Path, section: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let read_err = |reason: String| ConfigError::Read { file: file.to_path_buf(), reason };
    if !file.is_file() {
        return Err(read_err("no such file (given by --config or FLEET_CONFIG)".into()));
    }
    let settings = config::Config::builder()
        .add_source(config::File::from(file).format(config::FileFormat::Toml))
        .build()
        .map_err(|e| read_err(e.to_string()))?;
    let table = match settings.get_table(section) {
        Ok(table) => table,
        Err(config::ConfigError::NotFound(_)) => return Ok(Vec::new()),
        Err(e) => return Err(read_err(format!("[{section}]: {e}"))),
    };
    let known = options(command);
    let mut out = Vec::new();
    let mut keys: Vec<_> = table.into_iter().collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, value) in keys {
        if let Some((_, env)) = SHARED_KEYS.iter().find(|(k, _)| *k == key) {
            let value = text(value).map_err(|reason| ConfigError::Value {
                file: file.to_path_buf(),
                section: section.to_string(),
                key: key.clone(),
                value: String::new(),
                reason,
            })?;
            out.push((env.to_string(), value));
            continue;
        }
        let Some((_, env, arg, _)) = known.iter().find(|(k, ..)| *k == key) else {
            let mut names: Vec<&str> = known.iter().map(|(k, ..)| k.as_str()).collect();
            names.extend(SHARED_KEYS.iter().map(|(k, _)| *k));
            names.sort();
            return Err(ConfigError::UnknownKey {
                file: file.to_path_buf(),
                section: section.to_string(),
                key,
                binary: command.get_name().to_string(),
                known: names.join(", "),
            });
        };
        let value_err = |value: String, reason: String| ConfigError::Value {
            file: file.to_path_buf(),
            section: section.to_string(),
            key: key.clone(),
            value,
            reason,
        };
        let value = text(value).map_err(|reason| value_err(String::new(), reason))?;
        // The option's own parser: a bad value is the file's error, named as such.
        let long = format!("--{}", arg.get_long().unwrap_or_default());
        let check = clap::Command::new("check").no_binary_name(true).arg(arg.clone());
        if let Err(e) = check.try_get_matches_from([long.as_str(), value.as_str()]) {
            let reason = e.to_string();
            let reason = reason.lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
            return Err(value_err(value, reason));
        }
        out.push((env.clone(), value));
    }
    Ok(out)
}

/// Applies the file's `section` under the environment: every key whose variable is unset is
/// set from the file. Call it at the start of `main`, before any thread starts, then parse
/// the flags as usual.
pub fn layer(command: &clap::Command, section: &str) -> Result<Option<PathBuf>, ConfigError> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let Some(file) = config_path(&args) else { return Ok(None) };
    for (env, value) in read(command, &file, section)? {
        if std::env::var_os(&env).is_none() {
            std::env::set_var(env, value);
        }
    }
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn command() -> Command {
        Command::new("fleet-scheduler")
            .arg(
                Arg::new("shard_size").long("shard-size").env("TEST_SHARD_SIZE").value_parser(clap::value_parser!(u32)),
            )
            .arg(Arg::new("placement").long("placement").env("TEST_PLACEMENT").value_parser(["spread", "pack"]))
            .arg(Arg::new("config").long("config"))
            .subcommand(Command::new("serve").arg(Arg::new("devices").long("devices").env("TEST_DEVICES")))
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn keys_become_the_options_variables() {
        let (_dir, path) = file("[scheduler]\nshard_size = 8\nplacement = \"pack\"\ndevices = [\"cuda:0\", \"cuda:1\"]\n[worker]\nslots = 4\n");
        let mut got = read(&command(), &path, "scheduler").unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("TEST_DEVICES".to_string(), "cuda:0,cuda:1".to_string()),
                ("TEST_PLACEMENT".to_string(), "pack".to_string()),
                ("TEST_SHARD_SIZE".to_string(), "8".to_string()),
            ]
        );
        assert!(read(&command(), &path, "api").unwrap().is_empty(), "a section that is not there sets nothing");
    }

    #[test]
    fn errors_name_the_file_the_section_and_the_key() {
        let (_dir, path) = file("[scheduler]\nshard_sise = 8\n");
        let e = read(&command(), &path, "scheduler").unwrap_err().to_string();
        assert!(e.contains("fleet.toml: [scheduler] shard_sise: no such option"), "{e}");
        assert!(e.contains("shard_size"), "the known keys are listed: {e}");
        let (_dir, path) = file("[scheduler]\nshard_size = -3\n");
        let e = read(&command(), &path, "scheduler").unwrap_err().to_string();
        assert!(e.contains("[scheduler] shard_size = \"-3\""), "{e}");
        let (_dir, path) = file("[scheduler]\nplacement = \"fill\"\n");
        let e = read(&command(), &path, "scheduler").unwrap_err().to_string();
        assert!(e.contains("placement = \"fill\""), "{e}");
        let (_dir, path) = file("[scheduler\nshard_size = 8\n");
        assert!(matches!(read(&command(), &path, "scheduler"), Err(ConfigError::Read { .. })));
        assert!(matches!(
            read(&command(), Path::new("/nonexistent/fleet.toml"), "scheduler"),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn the_file_is_named_by_the_flag_first() {
        let args: Vec<OsString> = ["bin", "--config", "/a.toml"].iter().map(OsString::from).collect();
        assert_eq!(config_path(&args), Some(PathBuf::from("/a.toml")));
        let args: Vec<OsString> = ["bin", "--config=/b.toml", "serve"].iter().map(OsString::from).collect();
        assert_eq!(config_path(&args), Some(PathBuf::from("/b.toml")));
    }
}
