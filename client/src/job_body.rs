//! Job bodies, the JSON a tenant publishes, built from the short forms people type on a
//! command line (`--background color:#f2f2f2`, `--format jpeg:85`) or read from a JSON or
//! YAML file. The bodies stay untyped on purpose: the scheduler validates them strictly and
//! answers a bad one with a rejection the submitter can read.

use std::path::Path;

use serde_json::{json, Value};

use crate::JobBodyError;

/// What a `generate:PROMPT` background takes besides its prompt.
#[derive(Debug, Clone, Copy)]
pub struct Generation<'a> {
    /// Background generator, `name@version`.
    pub model: &'a str,
    /// Results per image.
    pub results: u32,
    /// `fast` or `quality`.
    pub sampling: &'a str,
    /// Seed of the first result.
    pub seed: u64,
}

/// The `input` of a job: exactly one of a prefix, a manifest key or explicit keys.
pub fn input(prefix: Option<&str>, manifest: Option<&str>, keys: &[String]) -> Result<Value, JobBodyError> {
    Ok(match (prefix, manifest, keys.is_empty()) {
        (Some(p), None, true) => json!({"prefix": p}),
        (None, Some(m), true) => json!({"manifest": m}),
        (None, None, false) => json!({"keys": keys}),
        _ => return Err(JobBodyError::InputSources),
    })
}

/// The `background` of a job from `transparent`, `color:#rrggbb`, `blur[:PCT]`, `image:KEY`
/// or `generate:PROMPT` (the latter with `generation`).
pub fn background(spec: &str, generation: &Generation<'_>) -> Result<Value, JobBodyError> {
    let (mode, arg) = spec.split_once(':').unwrap_or((spec, ""));
    Ok(match mode {
        "transparent" => json!({"mode": "transparent"}),
        "color" => json!({"mode": "color", "color": arg}),
        "blur" if arg.is_empty() => json!({"mode": "blur"}),
        "blur" => {
            let strength =
                arg.parse::<f32>().map_err(|cause| JobBodyError::BlurStrength { value: arg.into(), cause })?;
            json!({"mode": "blur", "strength_pct": strength})
        }
        "image" => json!({"mode": "image", "key": arg}),
        "generate" => json!({"mode": "generate", "model": generation.model, "prompt": arg,
                             "results": generation.results, "sampling": generation.sampling,
                             "seed": generation.seed}),
        _ => return Err(JobBodyError::UnknownBackground(spec.to_string())),
    })
}

/// The `output` of a job from `FORMAT[:QUALITY]` (quality 90 when absent) and an optional
/// longest side.
pub fn output(format: &str, max_side: Option<u32>) -> Result<Value, JobBodyError> {
    let (format, quality) = format.split_once(':').unwrap_or((format, "90"));
    let quality = quality.parse::<u8>().map_err(|cause| JobBodyError::Quality { value: quality.into(), cause })?;
    let mut output = json!({"format": format, "quality": quality});
    if let Some(max) = max_side {
        output["max_side"] = max.into();
    }
    Ok(output)
}

/// A `background_replace` job without its id.
pub fn background_replace(
    priority: &str,
    input: Value,
    background: Value,
    output: Value,
    model: &str,
    shard_size: Option<u32>,
) -> Value {
    let mut spec = json!({"input": input, "background": background, "output": output, "model": model});
    if let Some(shard) = shard_size {
        spec["shard_size"] = shard.into();
    }
    json!({"priority": priority, "kind": "background_replace", "spec": spec})
}

/// A job body read from a file: YAML when it ends in `.yaml` or `.yml`, JSON otherwise.
pub fn read_file(path: &Path) -> Result<Value, JobBodyError> {
    let text = std::fs::read_to_string(path).map_err(|cause| JobBodyError::Read { path: path.to_path_buf(), cause })?;
    let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    if is_yaml {
        serde_yaml::from_str(&text).map_err(|cause| JobBodyError::Yaml { path: path.to_path_buf(), cause })
    } else {
        serde_json::from_str(&text).map_err(|cause| JobBodyError::Json { path: path.to_path_buf(), cause })
    }
}

/// Sets the body's `id`, `id` when given, else the body's own, else `job-<now in ms>`;
/// returns it.
pub fn set_id(body: &mut Value, id: Option<&str>) -> String {
    let id = match (body.get("id").and_then(|v| v.as_str()), id) {
        (_, Some(id)) => id.to_string(),
        (Some(id), None) => id.to_string(),
        (None, None) => format!("job-{}", fleet_protocol::message::now_ms()),
    };
    body["id"] = Value::String(id.clone());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERATION: Generation<'static> =
        Generation { model: "bg-gen-ref@1.0.0", results: 1, sampling: "quality", seed: 0 };

    #[test]
    fn input_takes_exactly_one_source() {
        assert_eq!(input(Some("t/p/"), None, &[]).unwrap(), json!({"prefix": "t/p/"}));
        assert_eq!(input(None, Some("t/m.txt"), &[]).unwrap(), json!({"manifest": "t/m.txt"}));
        let keys = vec!["t/a.jpg".to_string(), "t/b.jpg".to_string()];
        assert_eq!(input(None, None, &keys).unwrap(), json!({"keys": ["t/a.jpg", "t/b.jpg"]}));
        for err in [input(None, None, &[]), input(Some("t/"), Some("t/m"), &[]), input(Some("t/"), None, &keys)] {
            assert_eq!(err.unwrap_err().to_string(), "give exactly one of --prefix, --manifest, --keys (or --file)");
        }
    }

    #[test]
    fn backgrounds_parse_to_their_modes() {
        let bg = |spec| background(spec, &GENERATION).unwrap();
        assert_eq!(bg("transparent"), json!({"mode": "transparent"}));
        assert_eq!(bg("color:#f2f2f2"), json!({"mode": "color", "color": "#f2f2f2"}));
        assert_eq!(bg("blur"), json!({"mode": "blur"}));
        assert_eq!(bg("blur:5"), json!({"mode": "blur", "strength_pct": 5.0}));
        assert_eq!(bg("image:t/bg.png"), json!({"mode": "image", "key": "t/bg.png"}));
        let generation = Generation { model: "g@2", results: 4, sampling: "fast", seed: 7 };
        assert_eq!(
            background("generate:white marble: polished", &generation).unwrap(),
            json!({"mode": "generate", "model": "g@2", "prompt": "white marble: polished",
                   "results": 4, "sampling": "fast", "seed": 7})
        );
        assert_eq!(background("plaid", &GENERATION).unwrap_err().to_string(), "unknown background \"plaid\"");
        let err = background("blur:lots", &GENERATION).unwrap_err();
        assert!(matches!(err, JobBodyError::BlurStrength { .. }), "{err:?}");
        assert_eq!(err.to_string(), "invalid blur strength \"lots\": invalid float literal");
    }

    #[test]
    fn output_defaults_quality_to_90() {
        assert_eq!(output("jpeg:90", None).unwrap(), json!({"format": "jpeg", "quality": 90}));
        assert_eq!(output("png", Some(1024)).unwrap(), json!({"format": "png", "quality": 90, "max_side": 1024}));
        assert_eq!(output("jpeg:75", None).unwrap(), json!({"format": "jpeg", "quality": 75}));
        let err = output("jpeg:300", None).unwrap_err();
        assert!(matches!(err, JobBodyError::Quality { .. }), "{err:?}");
        assert!(err.to_string().starts_with("invalid output quality \"300\": "), "{err}");
    }

    #[test]
    fn a_job_file_is_read_as_yaml_or_json() {
        let dir = std::env::temp_dir().join(format!("fleet-client-job-body-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (yaml, json, bad) = (dir.join("job.yml"), dir.join("job.json"), dir.join("bad.json"));
        std::fs::write(&yaml, "priority: batch\nkind: background_replace\n").unwrap();
        std::fs::write(&json, r#"{"priority": "batch"}"#).unwrap();
        std::fs::write(&bad, "priority: batch").unwrap();
        assert_eq!(read_file(&yaml).unwrap(), json!({"priority": "batch", "kind": "background_replace"}));
        assert_eq!(read_file(&json).unwrap(), json!({"priority": "batch"}));
        let err = read_file(&bad).unwrap_err();
        assert!(matches!(err, JobBodyError::Json { .. }), "{err:?}");
        assert!(err.to_string().starts_with(&format!("{} is not valid JSON: ", bad.display())), "{err}");
        let missing = dir.join("missing.yaml");
        let err = read_file(&missing).unwrap_err();
        assert!(matches!(err, JobBodyError::Read { .. }), "{err:?}");
        assert!(err.to_string().starts_with(&format!("reading {}: ", missing.display())), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_background_replace_job_matches_the_protocol() {
        let body = background_replace(
            "batch",
            json!({"prefix": "tenant-a/catalog/"}),
            json!({"mode": "color", "color": "#f2f2f2"}),
            json!({"format": "jpeg", "quality": 90}),
            "matting-ref@1.0.0",
            None,
        );
        assert_eq!(
            body,
            json!({"priority": "batch", "kind": "background_replace",
                   "spec": {"input": {"prefix": "tenant-a/catalog/"},
                            "background": {"mode": "color", "color": "#f2f2f2"},
                            "output": {"format": "jpeg", "quality": 90},
                            "model": "matting-ref@1.0.0"}})
        );
        let sharded = background_replace("interactive", json!({}), json!({}), json!({}), "m@1", Some(16));
        assert_eq!(sharded["spec"]["shard_size"], json!(16));
    }

    #[test]
    fn the_id_flag_wins_over_the_body() {
        let mut body = json!({"id": "from-file"});
        assert_eq!(set_id(&mut body, Some("from-flag")), "from-flag");
        assert_eq!(body["id"], "from-flag");
        let mut body = json!({"id": "from-file"});
        assert_eq!(set_id(&mut body, None), "from-file");
        let mut body = json!({"priority": "batch"});
        let id = set_id(&mut body, None);
        assert!(id.starts_with("job-") && body["id"] == id.as_str());
    }
}
