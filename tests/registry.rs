//! The model registry on the real S3 server: the reference model is published, resolves by
//! `name@version`, an unknown model is refused with a clear reason, and a fetched copy loads
//! in libtorch and gives the same masks as the local one.

use fleet_common::manifest::ModelRef;
use fleet_common::registry::{fetch, publish, resolve, RegistryError};
use fleet_common::store::s3::{S3Config, S3Store};
use fleet_common::DeviceSpec;
use fleet_tests::{png_item, reference_dir, reference_engine};
use fleet_worker::engine::{Engine, EngineOptions, InferenceThread};

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
    assert_eq!(dir, cache.path().join("matting-ref/1.0.0"));
    assert!(!std::fs::read_dir(cache.path().join("matting-ref")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".fetching")));
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
