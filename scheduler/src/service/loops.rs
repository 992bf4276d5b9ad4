//! The loops of a broker session that consume: intake, reports and dead-lettered tasks, and
//! the queue-depth sampler. Each stops taking deliveries when its token is cancelled and
//! returns once the deliveries in hand are handled and settled.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_protocol::message::{Report, TaskMessage};
use fleet_queue::{self as amqp, publish_confirmed, BATCH_REPORTS_QUEUE, DEAD_QUEUE, INTAKE_QUEUE};
use fleet_queue::{INTERACTIVE_REPORTS_QUEUE, TASKS_DEAD_QUEUE};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Session, Splitter};
use crate::context::Scheduler;
use crate::error::SchedulerError;
use crate::intake::{self, Disposition, Intake};

/// Longest a delivery is held while its dependency (Redis, S3) is down, trying again in
/// place: well under the broker's 30-minute consumer timeout.
const HOLD_FOR: Duration = Duration::from_secs(600);
/// First and longest pause between tries in place.
const HOLD_PAUSE: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

/// Runs `attempt` until it is done, trying again in place while it says `retry` (a
/// dependency is down), for up to [`HOLD_FOR`] or until `stop`. A delivery held this way
/// spends none of its delivery limit: returning it to the queue on every failed try would
/// dead-letter it after six tries, a few seconds into any outage. Returns the last outcome.
async fn patiently<T, F, Fut>(
    what: &str,
    stop: &CancellationToken,
    retry: impl Fn(&T) -> Option<String>,
    mut attempt: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let started = Instant::now();
    let mut pause = HOLD_PAUSE.0;
    loop {
        let outcome = attempt().await;
        let Some(reason) = retry(&outcome) else { return outcome };
        if started.elapsed() + pause > HOLD_FOR || stop.is_cancelled() {
            return outcome;
        }
        tracing::warn!(%reason, retry_in_ms = pause.as_millis() as u64, "{what} waits for its dependency");
        tokio::select! {
            _ = stop.cancelled() => return outcome,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(HOLD_PAUSE.1);
    }
}

/// Reports handled at once.
const REPORT_CONCURRENCY: usize = 64;
/// Unacknowledged reports the broker may push ahead.
const REPORT_PREFETCH: u16 = 512;

/// A consumer of `queue` on a channel of its own, holding up to `prefetch` deliveries.
pub(super) async fn consumer(connection: &Connection, queue: &str, prefetch: u16) -> Result<Consumer, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let tag = format!("scheduler-{queue}-{}", std::process::id());
    channel.basic_consume(queue, &tag, BasicConsumeOptions::default(), FieldTable::default()).await
}

/// The consumers of the report queues: interactive reports have one of their own, so a batch
/// backlog's reports never delay them.
#[derive(Clone)]
pub(super) struct ReportConsumers {
    interactive: Consumer,
    batch: Consumer,
}

/// Starts consuming both report queues.
pub(super) async fn reports(connection: &Connection) -> Result<ReportConsumers, lapin::Error> {
    Ok(ReportConsumers {
        interactive: consumer(connection, INTERACTIVE_REPORTS_QUEUE, REPORT_PREFETCH).await?,
        batch: consumer(connection, BATCH_REPORTS_QUEUE, REPORT_PREFETCH).await?,
    })
}

/// Takes intake messages one at a time, settles each and starts splitting the new jobs, until
/// the consumer fails or `stop` is cancelled.
pub(super) async fn intake(
    splitter: Splitter,
    mut deliveries: Consumer,
    stop: CancellationToken,
) -> Result<(), SchedulerError> {
    let Splitter { sched, session, .. } = &splitter;
    loop {
        let delivery = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            next = deliveries.next() => match next {
                Some(delivery) => delivery?,
                None => return Ok(()),
            },
        };
        let retry = |(d, _): &(Disposition, Intake)| match d {
            Disposition::Retry(reason) => Some(reason.clone()),
            _ => None,
        };
        let (disposition, outcome) = patiently("intake message", &stop, retry, || {
            intake::handle(sched, &session.events, &delivery.data, &delivery.properties)
        })
        .await;
        settle(&delivery, disposition).await?;
        if let Intake::NewJob { tenant, job, record, cursor } = outcome {
            splitter.spawn(tenant, job, Some((*record, cursor)));
        }
    }
}

/// Applies reports, up to [`REPORT_CONCURRENCY`] at once, interactive ones first; once
/// `stop` is cancelled it takes no more and returns when those in flight are settled.
pub(super) async fn reports_loop(
    sched: Arc<Scheduler>,
    session: Arc<Session>,
    consumers: ReportConsumers,
    stop: CancellationToken,
) -> Result<(), SchedulerError> {
    let reports = futures::stream::select_with_strategy(consumers.interactive, consumers.batch, |_: &mut ()| {
        futures::stream::PollNext::Left
    });
    let (sched, session, held) = (&sched, &session, &stop);
    reports
        .take_until(stop.cancelled())
        .for_each_concurrent(REPORT_CONCURRENCY, |delivery| async move {
            if let Ok(delivery) = delivery {
                on_report(sched, session, delivery, held).await;
            }
        })
        .await;
    Ok(())
}

/// Records the tasks the broker dead-lettered, one at a time, until the consumer ends or
/// `stop` is cancelled.
pub(super) async fn dead_letters(
    sched: Arc<Scheduler>,
    session: Arc<Session>,
    deliveries: Consumer,
    stop: CancellationToken,
) -> Result<(), SchedulerError> {
    let (sched, session) = (&sched, &session);
    deliveries
        .take_until(stop.cancelled())
        .for_each(|delivery| async move {
            if let Ok(delivery) = delivery {
                on_dead_task(sched, session, delivery).await;
            }
        })
        .await;
    Ok(())
}

/// Answers dead letters' copies one at a time (a dead-lettered submission is rejected so
/// its tenant hears), until the consumer ends or `stop` is cancelled.
pub(super) async fn dead_submissions(
    sched: Arc<Scheduler>,
    session: Arc<Session>,
    mut deliveries: Consumer,
    stop: CancellationToken,
) -> Result<(), SchedulerError> {
    loop {
        let delivery = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            next = deliveries.next() => match next {
                Some(delivery) => delivery?,
                None => return Ok(()),
            },
        };
        let retry = |d: &Disposition| match d {
            Disposition::Retry(reason) => Some(reason.clone()),
            _ => None,
        };
        let disposition = patiently("dead letter", &stop, retry, || {
            intake::dead_lettered(&sched, &session.events, &delivery.data, &delivery.properties)
        })
        .await;
        settle(&delivery, disposition).await?;
    }
}

async fn settle(delivery: &Delivery, disposition: Disposition) -> Result<(), lapin::Error> {
    match disposition {
        Disposition::Ack => delivery.ack(BasicAckOptions::default()).await,
        Disposition::Retry(reason) => {
            tracing::warn!(%reason, "intake message returned for a retry");
            tokio::time::sleep(Duration::from_millis(500)).await;
            delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await
        }
        Disposition::Park(reason) => {
            tracing::warn!(%reason, "intake message parked in {DEAD_QUEUE}");
            delivery.nack(BasicNackOptions { requeue: false, ..Default::default() }).await
        }
    }
}

async fn on_report(sched: &Scheduler, session: &Session, delivery: Delivery, stop: &CancellationToken) {
    let report: Report = match serde_json::from_slice(&delivery.data) {
        Ok(report) => report,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable report parked");
            let _ = delivery.nack(BasicNackOptions { requeue: false, ..Default::default() }).await;
            return;
        }
    };
    let retry = |outcome: &Result<(), fleet_state::JobStoreError>| match outcome {
        Err(e) if e.is_retryable() => Some(e.to_string()),
        _ => None,
    };
    let span = tracing::info_span!("report", kind = report.kind(), "messaging.system" = "rabbitmq");
    if let Some(traceparent) =
        fleet_queue::header_str(&delivery.properties, fleet_protocol::message::TRACEPARENT_HEADER)
    {
        fleet_telemetry::traces::follow(&span, &traceparent);
    }
    let handled = patiently("report", stop, retry, || crate::reports::handle(sched, &session.events, report.clone()))
        .instrument(span)
        .await;
    match handled {
        Ok(()) => {
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "report not recorded; returned for a retry");
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
        }
    }
}

async fn on_dead_task(sched: &Scheduler, session: &Session, delivery: Delivery) {
    let recorded = match serde_json::from_slice::<TaskMessage>(&delivery.data) {
        Ok(message) => crate::reports::dead_lettered(sched, &session.events, &message).await,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable dead-lettered task");
            Ok(())
        }
    };
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "dead-lettered task not recorded; returned for a retry");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
        return;
    }
    // Park the message itself for an operator, then let go of it.
    let parked =
        publish_confirmed(&session.parking, "", DEAD_QUEUE, &delivery.data, delivery.properties.clone()).await.is_ok();
    let _ = if parked {
        delivery.ack(BasicAckOptions::default()).await
    } else {
        delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await
    };
}

/// Samples the depth of every queue into `fleet_queue_depth` every 2 s, for as long as the
/// session lasts.
pub(super) async fn sample_queue_depths(channel: Channel, stop: CancellationToken) {
    use lapin::options::QueueDeclareOptions;
    let queues = [INTAKE_QUEUE, amqp::INTERACTIVE_QUEUE, amqp::BATCH_QUEUE, TASKS_DEAD_QUEUE, DEAD_QUEUE];
    loop {
        for queue in queues {
            let passive = QueueDeclareOptions { passive: true, ..Default::default() };
            match channel.queue_declare(queue, passive, FieldTable::default()).await {
                Ok(q) => {
                    fleet_telemetry::metrics::QUEUE_DEPTH.with_label_values(&[queue]).set(q.message_count() as i64)
                }
                Err(_) => return,
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
