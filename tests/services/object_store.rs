//! One test suite for the object store trait, run against every backend: a local folder and
//! the real S3 server the test command starts (Garage, through `deploy/stack.sh`).

use fleet_store::local::LocalStore;
use fleet_store::s3::{S3Config, S3Store};
use fleet_store::{ObjectStore, StoreError};

/// Every behaviour the scheduler and workers rely on, under a prefix unique to this run.
async fn suite<S: ObjectStore>(store: &S, prefix: &str) {
    let key = format!("{prefix}photos/a.jpg");
    assert!(!store.exists(&key).await.unwrap());
    match store.get(&key).await {
        Err(StoreError::NotFound { key: k }) => assert_eq!(k, key),
        other => panic!("expected not found, got {other:?}"),
    }
    store.put(&key, b"first".to_vec(), "image/jpeg").await.unwrap();
    assert!(store.exists(&key).await.unwrap());
    assert_eq!(store.get(&key).await.unwrap(), b"first");
    // Rewriting a key replaces the object whole: a re-run writes the same keys again.
    store.put(&key, b"second".to_vec(), "image/jpeg").await.unwrap();
    assert_eq!(store.get(&key).await.unwrap(), b"second");
    // Ranged reads stream a large object piece by piece; past the end they come back empty.
    assert_eq!(store.get_range(&key, 1, 3).await.unwrap(), b"eco");
    assert_eq!(store.get_range(&key, 4, 100).await.unwrap(), b"nd");
    assert_eq!(store.get_range(&key, 6, 10).await.unwrap(), b"");
    assert_eq!(store.get_range(&key, 600, 10).await.unwrap(), b"");

    let mut expected: Vec<String> = (0..7).map(|i| format!("{prefix}list/{i:02}.png")).collect();
    for k in &expected {
        store.put(k, k.as_bytes().to_vec(), "image/png").await.unwrap();
    }
    store.put(&format!("{prefix}listing-not/x.png"), vec![1], "image/png").await.unwrap();
    let mut seen = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = store.list_page(&format!("{prefix}list/"), token, 3).await.unwrap();
        assert!(page.keys.len() <= 3);
        seen.extend(page.keys);
        pages += 1;
        match page.next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    expected.sort();
    assert_eq!(seen, expected, "paged listing returns every key under the prefix once, in order");
    assert_eq!(pages, 3);

    store.delete(&key).await.unwrap();
    assert!(!store.exists(&key).await.unwrap());
    store.delete(&key).await.unwrap();
    assert!(matches!(store.put("a/../b", vec![], "x").await, Err(StoreError::BadKey(_))));
}

fn run_id() -> String {
    format!("test-runs/{}/", fleet_tests_services::unique("store"))
}

#[tokio::test]
async fn local_folder_backend_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    suite(&LocalStore::new(dir.path()), &run_id()).await;
}

#[tokio::test]
async fn s3_backend_passes_the_suite_against_the_real_server() {
    let cfg = S3Config::from_env().expect("the test command starts the stack and exports its settings");
    suite(&S3Store::new(&cfg), &run_id()).await;
}

#[tokio::test]
async fn s3_errors_say_what_failed_and_whether_to_retry() {
    let mut cfg = S3Config::from_env().expect("the test command starts the stack and exports its settings");
    cfg.secret_key = "not-the-secret".repeat(4);
    let err = S3Store::new(&cfg).get("test-runs/x").await.unwrap_err();
    assert!(!err.is_retryable(), "a signature error is final: {err}");
    assert!(err.to_string().contains("get test-runs/x"), "{err}");
    cfg.endpoint = "http://127.0.0.1:9".into();
    let err = S3Store::new(&cfg).put("test-runs/y", vec![1], "x").await.unwrap_err();
    assert!(err.is_retryable(), "an unreachable server is worth retrying: {err}");
}
