//! The model registry on the real S3 server: the reference model is published, resolves by
//! `name@version`, an unknown model is refused with a clear reason, and a fetched copy loads
//! in libtorch and gives the same masks as the local one. The worker's disk cache is keyed by
//! content: a second fetch downloads nothing, a republished model downloads only what changed
//! into a new folder, a corrupted object is refused without leaving a blob, and a model
//! published without recorded hashes still fetches.

use std::path::{Path, PathBuf};

use fleet_engine::{Engine, EngineOptions, InferenceThread};
use fleet_protocol::manifest::ModelRef;
use fleet_protocol::DeviceSpec;
use fleet_store::registry::{fetch, fetch_counted, publish, resolve, FetchStats, RegistryError, FILE_LIST};
use fleet_store::s3::{S3Config, S3Store};
use fleet_store::ObjectStore;
use fleet_tests_e2e::{png_item, reference_dir, reference_engine, unique};

fn store() -> S3Store {
    S3Store::new(&S3Config::from_env().expect("the test command starts the stack and exports its settings"))
}

#[tokio::test]
async fn the_reference_model_round_trips_through_the_registry() {
    let store = store();
    let published = publish(&store, &reference_dir()).await.unwrap();
    let model: ModelRef = "matting-ref@1.0.0".parse().unwrap();
    assert_eq!(published.model_ref(), model);
    assert_eq!(resolve(&store, &model).await.unwrap(), published);

    let cache = tempfile::tempdir().unwrap();
    let dir = fetch(&store, &model, cache.path()).await.unwrap();
    assert_eq!(dir.parent(), Some(cache.path().join("by-digest").as_path()));
    assert_eq!(leftovers(cache.path()), Vec::<String>::new());
    let fetched = Engine::new(InferenceThread::start(&dir, DeviceSpec::Cpu).unwrap());
    let item = png_item("x.png", &fleet_synth::render_sample(0x5E6, 3, 320, 600));
    let opts = EngineOptions::default();
    let theirs = fetched.process_batch(vec![item.clone()], &opts).unwrap().remove(0).unwrap();
    let ours = reference_engine().process_batch(vec![item], &opts).unwrap().remove(0).unwrap();
    assert_eq!(theirs.matte_png, ours.matte_png, "the fetched model is the same model");
}

#[tokio::test]
async fn an_unknown_model_is_refused_with_a_clear_reason() {
    let model: ModelRef = "no-such-model@9.9.9".parse().unwrap();
    match resolve(&store(), &model).await {
        Err(e @ RegistryError::UnknownModel { .. }) => {
            assert_eq!(
                e.to_string(),
                "unknown model no-such-model@9.9.9: nothing is published at models/no-such-model/9.9.9/"
            );
        }
        other => panic!("expected unknown model, got {other:?}"),
    }
    let cache = tempfile::tempdir().unwrap();
    assert!(matches!(fetch(&store(), &model, cache.path()).await, Err(RegistryError::UnknownModel { .. })));
}

/// sha256 of `abc` (FIPS 180-2 example), to check the recorded hashes against a known value.
const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

/// A model folder `<name>@1.0.0` with `model.pt` and a separate `embed.pt`; the bytes are
/// not TorchScript, which fetching never looks at.
fn model_folder(root: &Path, name: &str, model_pt: &[u8], embed_pt: &[u8]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = serde_json::json!({
        "name": name, "version": "1.0.0", "task": "matting", "file": "model.pt",
        "input": {"height": 64, "width": 64, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "output": {"alpha": "probability", "embedding": {"source": "model", "file": "embed.pt", "dim": 4}},
        "parameters": 1, "memory_per_image_mib": 1.0, "weights_mib": 0.1,
    });
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    std::fs::write(dir.join("model.pt"), model_pt).unwrap();
    std::fs::write(dir.join("embed.pt"), embed_pt).unwrap();
    dir
}

/// Temporary files or folders left anywhere in the cache.
fn leftovers(cache: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for sub in ["blobs/sha256", "by-digest"] {
        for entry in std::fs::read_dir(cache.join(sub)).into_iter().flatten() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                found.push(format!("{sub}/{name}"));
            }
        }
    }
    found
}

/// The recorded sha256 of `file` in the model's `files.json`.
async fn recorded_sha256(store: &S3Store, name: &str, file: &str) -> String {
    let list = store.get(&format!("models/{name}/1.0.0/{FILE_LIST}")).await.unwrap();
    let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
    list["files"][file]["sha256"].as_str().unwrap_or_else(|| panic!("{file} not in {list}")).to_string()
}

#[tokio::test]
async fn a_second_fetch_downloads_nothing_and_returns_the_same_folder() {
    let (store, src, cache) = (store(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let name = unique("cache-hit");
    let embed = vec![7u8; 5000];
    publish(&store, &model_folder(src.path(), &name, b"abc", &embed)).await.unwrap();
    let list = store.get(&format!("models/{name}/1.0.0/{FILE_LIST}")).await.unwrap();
    let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(list["files"]["model.pt"], serde_json::json!({"sha256": SHA256_ABC, "size": 3}), "{list}");
    assert_eq!(list["files"]["embed.pt"]["size"], 5000, "{list}");
    assert!(list["files"]["manifest.json"]["sha256"].is_string(), "{list}");

    let model: ModelRef = format!("{name}@1.0.0").parse().unwrap();
    let (first, stats) = fetch_counted(&store, &model, cache.path()).await.unwrap();
    assert_eq!(stats, FetchStats { files_downloaded: 2, files_reused: 0, bytes_downloaded: 5003 });
    assert_eq!(first.parent(), Some(cache.path().join("by-digest").as_path()));
    assert_eq!(std::fs::read(first.join("model.pt")).unwrap(), b"abc");
    assert_eq!(std::fs::read(first.join("embed.pt")).unwrap(), embed);
    assert_eq!(
        std::fs::read(first.join("manifest.json")).unwrap(),
        std::fs::read(src.path().join(&name).join("manifest.json")).unwrap()
    );
    assert!(cache.path().join("blobs/sha256").join(SHA256_ABC).is_file());

    let (second, stats) = fetch_counted(&store, &model, cache.path()).await.unwrap();
    assert_eq!(stats, FetchStats { files_downloaded: 0, files_reused: 2, bytes_downloaded: 0 });
    assert_eq!(second, first);

    // Without the folder, the blobs alone still spare the downloads.
    std::fs::remove_dir_all(&first).unwrap();
    let (third, stats) = fetch_counted(&store, &model, cache.path()).await.unwrap();
    assert_eq!(stats, FetchStats { files_downloaded: 0, files_reused: 2, bytes_downloaded: 0 });
    assert_eq!(third, first);
    assert_eq!(std::fs::read(third.join("model.pt")).unwrap(), b"abc");
    assert_eq!(leftovers(cache.path()), Vec::<String>::new());
}

#[tokio::test]
async fn a_republished_model_downloads_only_the_changed_file_into_a_new_folder() {
    let (store, src, cache) = (store(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let name = unique("republish");
    let model: ModelRef = format!("{name}@1.0.0").parse().unwrap();
    let dir = model_folder(src.path(), &name, b"first weights", &[1u8; 2000]);
    publish(&store, &dir).await.unwrap();
    let old = fetch(&store, &model, cache.path()).await.unwrap();

    std::fs::write(dir.join("model.pt"), b"second weights, longer").unwrap();
    publish(&store, &dir).await.unwrap();
    let (new, stats) = fetch_counted(&store, &model, cache.path()).await.unwrap();
    assert_eq!(stats, FetchStats { files_downloaded: 1, files_reused: 1, bytes_downloaded: 22 });
    assert_ne!(new, old, "new bytes under the same name@version make a new folder");
    assert_eq!(std::fs::read(new.join("model.pt")).unwrap(), b"second weights, longer");
    assert_eq!(std::fs::read(new.join("embed.pt")).unwrap(), [1u8; 2000]);
    assert_eq!(std::fs::read(old.join("model.pt")).unwrap(), b"first weights", "the old folder is left as it was");
}

#[tokio::test]
async fn a_corrupted_object_fails_the_hash_check_and_leaves_no_blob() {
    let (store, src, cache) = (store(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let name = unique("corrupt");
    let model: ModelRef = format!("{name}@1.0.0").parse().unwrap();
    publish(&store, &model_folder(src.path(), &name, b"the published weights", &[2u8; 100])).await.unwrap();
    let published = recorded_sha256(&store, &name, "model.pt").await;
    store.put(&format!("models/{name}/1.0.0/model.pt"), b"abc".to_vec(), "application/octet-stream").await.unwrap();

    let err = fetch_counted(&store, &model, cache.path()).await.expect_err("a corrupted object is refused");
    let message = err.to_string();
    match err {
        RegistryError::HashMismatch { file, expected, actual, .. } => {
            assert_eq!(
                (file.as_str(), expected.as_str(), actual.as_str()),
                ("model.pt", published.as_str(), SHA256_ABC)
            );
        }
        other => panic!("expected a hash mismatch, got {other:?}"),
    }
    for part in [name.as_str(), "model.pt", &published, SHA256_ABC] {
        assert!(message.contains(part), "{message:?} names {part}");
    }
    let blobs = cache.path().join("blobs/sha256");
    assert!(!blobs.join(SHA256_ABC).exists(), "the corrupt bytes are not cached");
    assert!(!blobs.join(&published).exists(), "nothing is cached under the expected hash");
    let folders = std::fs::read_dir(cache.path().join("by-digest")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(folders, 0, "no model folder is made");
    assert_eq!(leftovers(cache.path()), Vec::<String>::new());
}

#[tokio::test]
async fn a_model_published_without_hashes_still_fetches() {
    let (store, src, cache) = (store(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let name = unique("unhashed");
    let model: ModelRef = format!("{name}@1.0.0").parse().unwrap();
    let dir = model_folder(src.path(), &name, b"abc", &[3u8; 300]);
    publish(&store, &dir).await.unwrap();
    store.delete(&format!("models/{name}/1.0.0/{FILE_LIST}")).await.unwrap();

    let (legacy, stats) = fetch_counted(&store, &model, cache.path()).await.unwrap();
    assert_eq!(stats, FetchStats { files_downloaded: 2, files_reused: 0, bytes_downloaded: 303 });
    assert_eq!(std::fs::read(legacy.join("model.pt")).unwrap(), b"abc");
    assert!(cache.path().join("blobs/sha256").join(SHA256_ABC).is_file(), "downloaded bytes are hashed and cached");

    // Once republished with hashes, the same bytes are the same folder and nothing is downloaded.
    publish(&store, &dir).await.unwrap();
    let (hashed, stats) = fetch_counted(&store, &model, cache.path()).await.unwrap();
    assert_eq!(stats, FetchStats { files_downloaded: 0, files_reused: 2, bytes_downloaded: 0 });
    assert_eq!(hashed, legacy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fetches_racing_into_one_cache_agree_and_leave_nothing_behind() {
    let (store, src, cache) = (store(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let name = unique("race");
    let model: ModelRef = format!("{name}@1.0.0").parse().unwrap();
    publish(&store, &model_folder(src.path(), &name, &[4u8; 300_000], &[5u8; 200_000])).await.unwrap();
    let fetches = (0..4).map(|_| {
        let (store, model, root) = (store.clone(), model.clone(), cache.path().to_path_buf());
        tokio::spawn(async move { fetch(&store, &model, &root).await.unwrap() })
    });
    let dirs: Vec<PathBuf> = futures::future::join_all(fetches).await.into_iter().map(|d| d.unwrap()).collect();
    assert!(dirs.iter().all(|d| *d == dirs[0]), "{dirs:?}");
    assert_eq!(std::fs::read(dirs[0].join("model.pt")).unwrap(), [4u8; 300_000]);
    assert_eq!(leftovers(cache.path()), Vec::<String>::new());
}
