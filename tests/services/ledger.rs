//! The royalty ledger on the real PostgreSQL of the stack: one row per output whoever writes
//! it and however often, rows that cannot be changed, reports that sum the shares, and
//! revocations the workers read.

use fleet_attribution::{Entry, Ledger, Period};
use fleet_protocol::attribution::Share;
use fleet_tests_services::unique;

fn url(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} (deploy/stack.sh env prints it)"))
}

fn entry(job: &str, item: &str, shares: &[(&str, f64)]) -> Entry {
    Entry {
        output_key: format!("tenant-a/results/{job}/{item}/result.png"),
        tenant: "tenant-a".into(),
        job: job.into(),
        item: item.into(),
        model: "bg-gen@1.0.0".into(),
        record_key: format!("tenant-a/results/{job}/{item}/attribution.json"),
        shares: shares.iter().map(|(c, s)| Share { contributor: c.to_string(), share: *s }).collect(),
    }
}

#[tokio::test]
async fn an_output_is_recorded_once_whatever_a_redone_task_writes_later() {
    let ledger = Ledger::connect(&url("FLEET_WORKER_LEDGER_URL")).await.unwrap();
    let (job, alice, bob) = (unique("job"), unique("alice"), unique("bob"));
    let first = entry(&job, "a.jpg", &[(&alice, 0.75), (&bob, 0.25)]);
    assert_eq!(ledger.record(std::slice::from_ref(&first)).await.unwrap(), 1);
    // The redo computed other shares (another device, say): the ledger keeps the first.
    let redo = entry(&job, "a.jpg", &[(&bob, 1.0)]);
    let other = entry(&job, "b.jpg", &[(&bob, 1.0)]);
    assert_eq!(ledger.record(&[redo, other]).await.unwrap(), 1, "only b.jpg is new");
    let kept = ledger.shares_of(&first.output_key).await.unwrap();
    assert_eq!(kept, first.shares);
}

#[tokio::test]
async fn a_contributor_report_sums_the_shares_of_the_outputs_in_the_period() {
    let writer = Ledger::connect(&url("FLEET_WORKER_LEDGER_URL")).await.unwrap();
    let (job, alice, bob) = (unique("job"), unique("alice"), unique("bob"));
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() - 1.0;
    writer
        .record(&[
            entry(&job, "1.jpg", &[(&alice, 0.6), (&bob, 0.4)]),
            entry(&job, "2.jpg", &[(&alice, 1.0)]),
            entry(&job, "3.jpg", &[]),
        ])
        .await
        .unwrap();
    let reader = Ledger::connect(&url("FLEET_API_LEDGER_URL")).await.unwrap();
    let report = reader.report(&Period { job: Some(job.clone()), ..Default::default() }).await.unwrap();
    assert_eq!((report.outputs, report.credited_outputs), (3, 2));
    let of = |who: &str| report.contributors.iter().find(|c| c.contributor == who).cloned().unwrap();
    assert_eq!((of(&alice).outputs, of(&bob).outputs), (2, 1));
    assert!((of(&alice).share - 1.6).abs() < 1e-9 && (of(&bob).share - 0.4).abs() < 1e-9);
    let total: f64 = report.contributors.iter().map(|c| c.share).sum();
    assert!((total - report.credited_outputs as f64).abs() < 1e-9, "each credited output's shares sum to 1");
    // A period that ended before the rows were written holds none of them.
    let earlier = Period { job: Some(job.clone()), to: Some(before), ..Default::default() };
    assert_eq!(reader.report(&earlier).await.unwrap().outputs, 0);
    let one = Period { job: Some(job), contributor: Some(bob.clone()), ..Default::default() };
    assert_eq!(reader.report(&one).await.unwrap().contributors.len(), 1);
}

#[tokio::test]
async fn recorded_rows_cannot_be_changed_or_removed_and_shares_stay_in_range() {
    let writer = Ledger::connect(&url("FLEET_WORKER_LEDGER_URL")).await.unwrap();
    let (job, alice) = (unique("job"), unique("alice"));
    let e = entry(&job, "x.jpg", &[(&alice, 1.0)]);
    writer.record(std::slice::from_ref(&e)).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&url("FLEET_LEDGER_URL"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    for sql in [
        "UPDATE share SET share = 0.5 WHERE output_key = $1",
        "DELETE FROM share WHERE output_key = $1",
        "UPDATE attribution SET model = 'other@1' WHERE output_key = $1",
    ] {
        assert!(client.execute(sql, &[&e.output_key]).await.is_err(), "{sql} must be refused");
    }
    assert_eq!(writer.shares_of(&e.output_key).await.unwrap(), e.shares);
    let bad = entry(&unique("job"), "y.jpg", &[(&alice, 1.5)]);
    assert!(writer.record(std::slice::from_ref(&bad)).await.is_err(), "a share above 1 is refused");
    assert!(writer.recorded(&[bad.output_key]).await.unwrap().is_empty(), "and its transaction left nothing");
}

#[tokio::test]
async fn revocations_the_operator_records_are_what_workers_read() {
    let admin = Ledger::connect(&url("FLEET_LEDGER_URL")).await.unwrap();
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    admin.revoke(&alice, None, "withdrew all").await.unwrap();
    admin.revoke(&bob, Some("tenant-a/photos/b1.jpg"), "withdrew one photo").await.unwrap();
    let worker = Ledger::connect(&url("FLEET_WORKER_LEDGER_URL")).await.unwrap();
    let revoked = worker.revocations(&[alice.clone(), bob.clone(), carol.clone()]).await.unwrap();
    assert!(revoked.contributors.contains(&alice) && !revoked.contributors.contains(&bob));
    assert!(revoked.images.contains(&(bob.clone(), "tenant-a/photos/b1.jpg".to_string())));
    assert!(!revoked.contributors.contains(&carol));
    // Workers may read revocations, never record them.
    assert!(worker.revoke(&carol, None, "not theirs to say").await.is_err());
}
