use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

type LoopEnd = Result<(), SchedulerError>;

/// A loop that runs until `stop`, then takes `drain` to finish what it holds and counts itself
/// into `drained`.
fn until_stopped(stop: CancellationToken, drain: Duration, drained: Arc<AtomicUsize>) -> JoinHandle<LoopEnd> {
    tokio::spawn(async move {
        stop.cancelled().await;
        tokio::time::sleep(drain).await;
        drained.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })
}

#[tokio::test]
async fn shutdown_from_above_ends_the_session_cleanly_once_every_loop_has_drained() {
    let root = CancellationToken::new();
    let stop = root.child_token();
    let drained = Arc::new(AtomicUsize::new(0));
    let loops = Loops::new();
    for ms in [0, 50, 100] {
        loops.push(until_stopped(stop.child_token(), Duration::from_millis(ms), drained.clone()));
    }
    let session = tokio::spawn({
        let stop = stop.clone();
        async move { first_to_end(loops, &stop).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!session.is_finished(), "the session runs until something stops it");
    root.cancel();
    session.await.unwrap().unwrap();
    assert_eq!(drained.load(Ordering::SeqCst), 3, "every loop finished what it held first");
}

#[tokio::test]
async fn a_loop_that_ends_by_itself_stops_the_others_and_the_session() {
    let stop = CancellationToken::new();
    let drained = Arc::new(AtomicUsize::new(0));
    let loops = Loops::new();
    loops.push(until_stopped(stop.child_token(), Duration::from_millis(30), drained.clone()));
    loops.push(tokio::spawn(async { Ok(()) }));
    let ended = first_to_end(loops, &stop).await;
    assert!(matches!(ended, Err(SchedulerError::ConsumerStopped)), "{ended:?}");
    assert!(stop.is_cancelled());
    assert_eq!(drained.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_first_failure_is_the_sessions() {
    let stop = CancellationToken::new();
    let drained = Arc::new(AtomicUsize::new(0));
    let loops = Loops::new();
    loops.push(until_stopped(stop.child_token(), Duration::ZERO, drained.clone()));
    loops.push(tokio::spawn(async { Err(SchedulerError::TaskQueueClosed) }));
    let ended = first_to_end(loops, &stop).await;
    assert!(matches!(ended, Err(SchedulerError::TaskQueueClosed)), "{ended:?}");
    assert_eq!(drained.load(Ordering::SeqCst), 1);
}

#[tokio::test]
#[should_panic(expected = "a loop broke")]
async fn a_loop_that_panics_panics_the_session() {
    let stop = CancellationToken::new();
    let loops = Loops::new();
    loops.push(tokio::spawn(async { panic!("a loop broke") }));
    let _ = first_to_end(loops, &stop).await;
}
