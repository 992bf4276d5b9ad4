//! Whether the worker takes new tasks. Two things stop it: the operator's order (cordon or
//! drain, read from Redis by the heartbeat and passed on through a watch channel: operator
//! state, which can turn back to run) and shutdown (a cancellation token of the tree rooted in
//! [`super::run`], which never turns back). The broker session loop and every task watch both.

use fleet_protocol::heartbeat::Order;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The operator's order and the shutdown token, watched together.
#[derive(Clone)]
pub(super) struct Intake {
    /// The operator's order, as the heartbeat last read it.
    order: watch::Receiver<Order>,
    /// Cancelled when the worker shuts down.
    shutdown: CancellationToken,
}

impl Intake {
    /// Watches the operator's `order` and the `shutdown` token.
    pub(super) fn new(order: watch::Receiver<Order>, shutdown: CancellationToken) -> Self {
        Intake { order, shutdown }
    }

    /// Whether the worker takes tasks now: not shutting down, and the order is to run.
    pub(super) fn is_open(&self) -> bool {
        !self.shutdown.is_cancelled() && *self.order.borrow() == Order::Run
    }

    /// Resolves once the worker is to take nothing new: shutdown, cordon or drain (or the
    /// order can no longer be read, which only happens once the heartbeat has ended).
    pub(super) async fn closed(&mut self) {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => {}
            _ = self.order.wait_for(|o| *o != Order::Run) => {}
        }
    }

    /// After a cordon or drain: `true` once the operator orders the worker to run again,
    /// `false` on shutdown (which wins when both hold).
    pub(super) async fn reopened(&mut self) -> bool {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => false,
            ordered = self.order.wait_for(|o| *o == Order::Run) => {
                if ordered.is_ok() {
                    return true;
                }
                // No order will come any more: only shutdown ends the wait.
                self.shutdown.cancelled().await;
                false
            }
        }
    }

    /// Resolves when the worker shuts down.
    pub(super) async fn shutdown(&self) {
        self.shutdown.cancelled().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `future` resolves within a few milliseconds.
    async fn resolves<F: std::future::Future>(future: F) -> Option<F::Output> {
        tokio::time::timeout(Duration::from_millis(20), future).await.ok()
    }

    #[tokio::test]
    async fn a_cordon_closes_the_intake_and_an_uncordon_reopens_it() {
        let (order, rx) = watch::channel(Order::Run);
        let mut intake = Intake::new(rx, CancellationToken::new());
        assert!(intake.is_open());
        assert!(resolves(intake.closed()).await.is_none(), "open while the order is to run");
        order.send_replace(Order::Cordon);
        assert!(!intake.is_open());
        assert!(resolves(intake.closed()).await.is_some());
        order.send_replace(Order::Run);
        assert_eq!(resolves(intake.reopened()).await, Some(true));
        assert!(intake.is_open());
    }

    #[tokio::test]
    async fn shutdown_closes_the_intake_for_good() {
        let (order, rx) = watch::channel(Order::Run);
        let token = CancellationToken::new();
        let mut intake = Intake::new(rx, token.child_token());
        token.cancel();
        assert!(!intake.is_open(), "shutdown closes it whatever the operator's order");
        assert!(resolves(intake.closed()).await.is_some());
        assert_eq!(resolves(intake.reopened()).await, Some(false), "the order to run does not reopen it");
        drop(order);
        assert_eq!(resolves(intake.reopened()).await, Some(false));
    }

    #[tokio::test]
    async fn without_an_order_only_shutdown_ends_a_cordon() {
        let (order, rx) = watch::channel(Order::Drain);
        let token = CancellationToken::new();
        let mut intake = Intake::new(rx, token.clone());
        drop(order);
        assert!(resolves(intake.closed()).await.is_some(), "no order to read: take nothing new");
        assert!(resolves(intake.reopened()).await.is_none());
        token.cancel();
        assert_eq!(resolves(intake.reopened()).await, Some(false));
    }
}
