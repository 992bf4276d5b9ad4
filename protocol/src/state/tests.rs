use super::*;
use proptest::prelude::*;

#[test]
fn a_job_runs_to_the_outcome_its_items_earned() {
    let running = JobState::Accepted.apply(JobEvent::Queued).and_then(|s| s.apply(JobEvent::TaskStarted)).unwrap();
    assert_eq!(running, JobState::Running);
    let end = |ok, bad| running.apply(JobEvent::TasksEnded { succeeded: ok, failed: bad }).unwrap();
    assert_eq!(end(10, 0), JobState::Succeeded);
    assert_eq!(end(9, 1), JobState::SucceededWithItemErrors);
    assert_eq!(end(0, 3), JobState::Failed);
}

#[test]
fn terminal_jobs_accept_nothing_and_early_events_are_refused() {
    for terminal in [JobState::Succeeded, JobState::SucceededWithItemErrors, JobState::Failed, JobState::Cancelled] {
        for event in [
            JobEvent::Queued,
            JobEvent::TaskStarted,
            JobEvent::Cancel,
            JobEvent::Fail,
            JobEvent::TasksEnded { succeeded: 1, failed: 0 },
        ] {
            assert!(terminal.apply(event).is_err(), "{terminal:?} + {event:?}");
        }
    }
    assert!(JobState::Accepted.apply(JobEvent::TaskStarted).is_err());
    assert!(JobState::Running.apply(JobEvent::Queued).is_err());
    let err = JobState::Cancelled.apply(JobEvent::TaskStarted).unwrap_err();
    assert!(err.to_string().contains("Cancelled"), "{err}");
}

#[test]
fn a_task_retries_then_dead_letters() {
    let max = TaskEvent::Error { max_attempts: 2 };
    let first = TaskState::NEW.apply(TaskEvent::Dispatch).unwrap();
    assert_eq!(first, TaskState::Dispatched { attempt: 1 });
    let retry = first.apply(TaskEvent::Start { attempt: 1 }).and_then(|s| s.apply(max)).unwrap();
    assert_eq!(retry, TaskState::Pending { attempts: 1 });
    let second = retry.apply(TaskEvent::Dispatch).and_then(|s| s.apply(TaskEvent::Start { attempt: 2 })).unwrap();
    assert_eq!(second, TaskState::Running { attempt: 2 });
    assert_eq!(second.apply(max).unwrap(), TaskState::DeadLettered);
}

#[test]
fn a_lost_lease_redoes_the_task_without_spending_an_attempt() {
    let running = TaskState::Pending { attempts: 1 }
        .apply(TaskEvent::Dispatch)
        .and_then(|s| s.apply(TaskEvent::Start { attempt: 2 }))
        .unwrap();
    assert_eq!(running.apply(TaskEvent::LeaseLost).unwrap(), TaskState::Pending { attempts: 1 });
    assert!(TaskState::Succeeded.apply(TaskEvent::Complete).is_err(), "a task completes once");
    assert!(TaskState::NEW.apply(TaskEvent::Complete).is_err(), "an undispatched task cannot complete");
}

#[test]
fn broker_redeliveries_move_attempts_forward_only() {
    let running = TaskState::NEW.apply(TaskEvent::Dispatch).and_then(|s| s.apply(TaskEvent::Start { attempt: 1 }));
    let running = running.unwrap();
    // The worker died; RabbitMQ redelivered the message to another worker as attempt 2.
    assert_eq!(running.apply(TaskEvent::Start { attempt: 2 }).unwrap(), TaskState::Running { attempt: 2 });
    assert!(running.apply(TaskEvent::Start { attempt: 1 }).is_err(), "a repeated start is refused");
    let retry = TaskState::Pending { attempts: 2 };
    assert!(retry.apply(TaskEvent::Start { attempt: 2 }).is_err(), "an old attempt cannot start again");
    assert_eq!(retry.apply(TaskEvent::Start { attempt: 3 }).unwrap(), TaskState::Running { attempt: 3 });
    assert_eq!(running.apply(TaskEvent::DeadLetter).unwrap(), TaskState::DeadLettered);
    assert!(TaskState::Succeeded.apply(TaskEvent::DeadLetter).is_err(), "a finished task is not dead-lettered");
}

fn task_event() -> impl Strategy<Value = TaskEvent> {
    prop_oneof![
        Just(TaskEvent::Dispatch),
        (1u32..8).prop_map(|attempt| TaskEvent::Start { attempt }),
        Just(TaskEvent::DeadLetter),
        Just(TaskEvent::Complete),
        (1u32..5).prop_map(|m| TaskEvent::Error { max_attempts: m }),
        Just(TaskEvent::LeaseLost),
        Just(TaskEvent::Cancel),
    ]
}

proptest! {
    /// Whatever happens, attempts never exceed the limit, never go backwards past zero, and a
    /// terminal task stays terminal.
    #[test]
    fn task_histories_stay_within_their_limits(events in proptest::collection::vec(task_event(), 0..40)) {
        let mut state = TaskState::NEW;
        for event in events {
            let Ok(next) = state.apply(event) else {
                let dispatch_of_pending = matches!((state, event), (TaskState::Pending { .. }, TaskEvent::Dispatch));
                prop_assert!(state.is_terminal() || !dispatch_of_pending, "a pending task must accept a dispatch");
                continue;
            };
            if state.is_terminal() {
                prop_assert!(false, "terminal state {state:?} changed");
            }
            if let (TaskEvent::Error { max_attempts }, TaskState::Pending { attempts }) = (event, next) {
                prop_assert!(attempts < max_attempts);
            }
            if let (TaskState::Running { attempt: before }, TaskState::Running { attempt: after }) = (state, next) {
                prop_assert!(after > before, "attempts only move forward");
            }
            state = next;
        }
    }
}
