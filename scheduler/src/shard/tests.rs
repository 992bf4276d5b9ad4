use fleet_protocol::job::{BackgroundSpec, InputSpec, OutputFormatName, OutputSpec, Priority};
use fleet_store::local::LocalStore;
use fleet_store::ObjectStore;

use super::*;

fn spec(input: InputSpec) -> BackgroundReplaceSpec {
    BackgroundReplaceSpec {
        input,
        background: BackgroundSpec::Transparent,
        output: OutputSpec { format: OutputFormatName::Png, quality: 90, max_side: None },
        model: "m@1".into(),
        shard_size: None,
        shadow: None,
    }
}

/// Walks an input page by page from its start, as the sharder does, collecting every key.
async fn walk<S: ObjectStore>(store: &S, input: &InputSpec, shard: u32) -> (Vec<String>, usize) {
    let mut cursor = Cursor::start(input);
    let (mut keys, mut pages) = (Vec::new(), 0);
    loop {
        let page = read_page(store, input, &cursor, shard).await.unwrap();
        pages += 1;
        keys.extend(page.keys);
        match page.next {
            Some(next) => cursor = next,
            None => return (keys, pages),
        }
    }
}

#[tokio::test]
async fn a_manifest_is_read_in_chunks_with_no_line_lost_or_split() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    // Long lines so the manifest spans several chunks and lines straddle chunk ends.
    let expected: Vec<String> = (0..60_000).map(|i| format!("t/{}/{i:08}.jpg", "x".repeat(i % 97))).collect();
    let mut text = String::from("# catalog export\n\n");
    for key in &expected {
        text.push_str(&format!("  {key}\r\n"));
    }
    assert!(text.len() as u64 > 2 * MANIFEST_CHUNK);
    store.put("t/manifest.txt", text.into_bytes(), "text/plain").await.unwrap();
    let (keys, pages) = walk(&store, &InputSpec::Manifest("t/manifest.txt".into()), 10).await;
    assert_eq!(keys, expected);
    assert!(pages >= 3, "read in {pages} pages");
}

#[tokio::test]
async fn prefixes_and_key_lists_page_in_whole_shards() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    let expected: Vec<String> = (0..2_500).map(|i| format!("t/cat/{i:05}.png")).collect();
    for key in &expected {
        store.put(key, vec![0], "image/png").await.unwrap();
    }
    let (keys, pages) = walk(&store, &InputSpec::Prefix("t/cat/".into()), 300).await;
    assert_eq!(keys, expected);
    assert_eq!(pages, 3, "900 keys (3 shards of 300) per page");
    let (keys, pages) = walk(&store, &InputSpec::Keys(expected[..1_001].to_vec()), 7).await;
    assert_eq!(keys, expected[..1_001]);
    assert_eq!(pages, 2);
}

#[tokio::test]
async fn bad_manifests_fail_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    let missing =
        read_page(&store, &InputSpec::Manifest("t/none.txt".into()), &Cursor::Manifest { offset: 0 }, 4).await;
    assert!(matches!(missing, Err(PageError::Input(reason)) if reason.contains("no object")));
    store.put("t/long.txt", vec![b'a'; MANIFEST_CHUNK as usize + 10], "text/plain").await.unwrap();
    let long = read_page(&store, &InputSpec::Manifest("t/long.txt".into()), &Cursor::Manifest { offset: 0 }, 4).await;
    assert!(matches!(long, Err(PageError::Input(reason)) if reason.contains("over")));
    let mismatch = read_page(&store, &InputSpec::Prefix("t/".into()), &Cursor::Keys { next: 0 }, 4).await;
    assert!(mismatch.is_err());
}

#[test]
fn tasks_are_numbered_from_the_cursor_and_carry_the_job_settings() {
    let record = JobRecord {
        tenant: "tenant-a".into(),
        id: "job".into(),
        priority: Priority::Interactive,
        state: JobState::Accepted,
        model: "m@1".into(),
        request: serde_json::Value::Null,
        accepted_at_ms: 7,
        succeeded_items: 0,
        failed_items: 0,
        reason: None,
        traceparent: String::new(),
        finished_at_ms: None,
    };
    let keys: Vec<String> = (0..10).map(|i| format!("tenant-a/{i}")).collect();
    let tasks = make_tasks(&record, &spec(InputSpec::Keys(keys.clone())), &keys, 4, 12);
    let numbers: Vec<u32> = tasks.iter().map(|t| t.task).collect();
    assert_eq!(numbers, [12, 13, 14]);
    assert_eq!(tasks.iter().map(|t| t.keys.len()).collect::<Vec<_>>(), [4, 4, 2]);
    assert!(tasks.iter().all(|t| t.priority == Priority::Interactive && t.accepted_at_ms == 7));
    assert_eq!(tasks.into_iter().flat_map(|t| t.keys).collect::<Vec<_>>(), keys);
}
