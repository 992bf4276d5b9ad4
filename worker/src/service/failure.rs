//! Why an attempt failed, with what the scheduler should do about it: the kind travels in the
//! `attempt_failed` report ([`FailureKind`]), so an error no retry can fix costs one grant of
//! device time, not six.

use fleet_engine::EngineError;
use fleet_protocol::message::FailureKind;
use fleet_store::StoreError;

/// A task-level failure and its kind.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct AttemptError {
    /// What the scheduler does next: retry, fail the task, or ignore (lease lost).
    pub kind: FailureKind,
    /// Why, for the task record and the items' failure reasons.
    pub reason: String,
}

impl AttemptError {
    /// A failure that may pass later: the task is dispatched again after a backoff.
    pub fn retry(reason: impl Into<String>) -> Self {
        AttemptError { kind: FailureKind::RETRY, reason: reason.into() }
    }

    /// A failure no retry can fix: the task fails now.
    pub fn permanent(reason: impl Into<String>) -> Self {
        AttemptError { kind: FailureKind::Permanent, reason: reason.into() }
    }

    /// The lease was lost while the attempt ran: nothing it did counts.
    pub fn fenced(reason: impl Into<String>) -> Self {
        AttemptError { kind: FailureKind::Fenced, reason: reason.into() }
    }

    /// An object store failure in `what`: retried when the store says it may pass later
    /// (unreachable, throttled, a server error), permanent otherwise (denied, malformed).
    pub fn store(what: &str, e: &StoreError) -> Self {
        let reason = format!("{what}: {e}");
        if e.is_retryable() {
            AttemptError::retry(reason)
        } else {
            AttemptError::permanent(reason)
        }
    }

    /// An engine failure: retried when the device or its thread was at fault, permanent when
    /// the model is (unloadable, or breaking its contract).
    pub fn engine(e: &EngineError) -> Self {
        let reason = format!("engine: {e}");
        if e.is_retryable() {
            AttemptError::retry(reason)
        } else {
            AttemptError::permanent(reason)
        }
    }

    /// Whether the scheduler may try the task again.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, FailureKind::Retryable { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contract_break_is_permanent_and_a_stopped_thread_is_retried() {
        let contract = EngineError::Contract { model: "m@1".into(), reason: "alpha is [1,2]".into() };
        let failure = AttemptError::engine(&contract);
        assert_eq!(failure.kind, FailureKind::Permanent);
        assert!(failure.reason.contains("breaks the model contract"), "{}", failure.reason);
        assert!(AttemptError::engine(&EngineError::Stopped).is_retryable());
    }

    #[test]
    fn store_failures_follow_the_store_s_own_verdict() {
        let outage =
            StoreError::Backend { op: "get", key: "k".into(), reason: "connection refused".into(), retryable: true };
        let denied =
            StoreError::Backend { op: "get", key: "k".into(), reason: "access denied".into(), retryable: false };
        assert!(AttemptError::store("reading k", &outage).is_retryable());
        assert_eq!(AttemptError::store("reading k", &denied).kind, FailureKind::Permanent);
    }
}
