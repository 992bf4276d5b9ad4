//! The scheduler process: one broker session at a time, reconnecting with backoff when
//! RabbitMQ goes away. A session declares the topology, resumes splitting every job whose
//! cursor is in Redis, and runs the intake, reports and dead-lettered-task consumers, the
//! dispatcher (placement and leases) and the recovery sweep (expired leases, retries) until
//! the connection drops or shutdown is asked for.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fleet_protocol::keys::TenantId;
use fleet_protocol::message::{Report, TaskMessage};
use fleet_queue::{
    self as amqp, self, confirmed_channel, publish_confirmed, BATCH_REPORTS_QUEUE, DEAD_QUEUE, INTAKE_QUEUE,
    INTERACTIVE_REPORTS_QUEUE, TASKS_DEAD_QUEUE,
};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::task::JoinSet;

use crate::context::{Config, Scheduler};
use crate::intake::{self, Disposition, Intake};
use crate::shard::{shard_job, ShardCursor, TaskChannels};
use fleet_state::JobRecord;

/// Reports handled at once.
const REPORT_CONCURRENCY: usize = 64;
/// Unacknowledged reports the broker may push ahead.
const REPORT_PREFETCH: u16 = 512;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs the scheduler until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics_addr {
        let listener = fleet_telemetry::metrics::serve(addr);
        tokio::spawn(async move {
            if let Err(e) = listener.await {
                tracing::warn!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    let sched = Arc::new(Scheduler::connect(config).await?);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(200);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("scheduler stopping");
                return Ok(());
            }
            ended = session(sched.clone()) => {
                match ended {
                    Ok(()) => backoff = Duration::from_millis(200),
                    Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "broker session ended; reconnecting"),
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The channels of one broker session.
struct Session {
    connection: Connection,
    /// Confirm-mode channels for tasks, one per priority.
    tasks: TaskChannels,
    /// Confirm-mode channel for parked messages.
    parking: Channel,
    /// Channel for job events.
    events: Channel,
}

async fn session(sched: Arc<Scheduler>) -> anyhow::Result<()> {
    let connection = amqp::connect(&sched.config.amqp_url).await?;
    let setup = connection.create_channel().await?;
    amqp::declare_topology(&setup).await?;
    let session = Arc::new(Session {
        tasks: TaskChannels {
            interactive: confirmed_channel(&connection).await?,
            batch: confirmed_channel(&connection).await?,
        },
        parking: confirmed_channel(&connection).await?,
        events: connection.create_channel().await?,
        connection,
    });
    tracing::info!("connected to the broker");
    // Dropping the set at the end of the session aborts splitting; cursors make it resumable.
    let mut sharding = JoinSet::new();
    for (tenant, job, _) in sched.store.cursors().await? {
        if let Ok(tenant) = TenantId::new(&tenant) {
            tracing::info!(tenant = %tenant, job, "resuming the split of a job");
            spawn_shard(&mut sharding, &sched, &session, tenant, job, None);
        }
    }
    sharding.spawn(sample_queue_depths(session.connection.create_channel().await?));
    let intake = consumer(&session.connection, INTAKE_QUEUE, 32).await?;
    // Interactive reports have a consumer of their own, so a batch backlog's reports never
    // delay them.
    let reports = futures::stream::select_with_strategy(
        consumer(&session.connection, INTERACTIVE_REPORTS_QUEUE, REPORT_PREFETCH).await?,
        consumer(&session.connection, BATCH_REPORTS_QUEUE, REPORT_PREFETCH).await?,
        |_: &mut ()| futures::stream::PollNext::Left,
    );
    let dead = consumer(&session.connection, TASKS_DEAD_QUEUE, 16).await?;
    let reports_done = {
        let (sched, session) = (sched.clone(), session.clone());
        reports.for_each_concurrent(REPORT_CONCURRENCY, move |delivery| {
            let (sched, session) = (sched.clone(), session.clone());
            async move {
                if let Ok(delivery) = delivery {
                    on_report(&sched, &session, delivery).await;
                }
            }
        })
    };
    let dead_done = {
        let (sched, session) = (sched.clone(), session.clone());
        dead.for_each(move |delivery| {
            let (sched, session) = (sched.clone(), session.clone());
            async move {
                if let Ok(delivery) = delivery {
                    on_dead_task(&sched, &session, delivery).await;
                }
            }
        })
    };
    let intake_done = async {
        let mut intake = intake;
        while let Some(delivery) = intake.next().await {
            let delivery = delivery?;
            let (disposition, outcome) =
                intake::handle(&sched, &session.events, &delivery.data, &delivery.properties).await;
            settle(&delivery, disposition).await?;
            if let Intake::NewJob { tenant, job, record, cursor } = outcome {
                spawn_shard(&mut sharding, &sched, &session, tenant, job, Some((*record, cursor)));
            }
            while sharding.try_join_next().is_some() {}
        }
        anyhow::Ok(())
    };
    let dispatch_done = crate::dispatch::run(sched.clone(), &session.connection);
    let recovery_done = crate::recovery::run(
        sched.clone(),
        confirmed_channel(&session.connection).await?,
        session.connection.create_channel().await?,
    );
    // Every consumer is in place: from here a submitted job is taken at once.
    let _ready = fleet_telemetry::metrics::ReadyGuard::new();
    tracing::info!("ready: consuming intake, reports and tasks");
    tokio::select! {
        r = intake_done => r?,
        _ = reports_done => {}
        _ = dead_done => {}
        r = dispatch_done => r?,
        r = recovery_done => r?,
    }
    anyhow::bail!("a consumer stopped: the connection to the broker was lost")
}

fn spawn_shard(
    set: &mut JoinSet<()>,
    sched: &Arc<Scheduler>,
    session: &Arc<Session>,
    tenant: TenantId,
    job: String,
    known: Option<(JobRecord, ShardCursor)>,
) {
    let (sched, session) = (sched.clone(), session.clone());
    set.spawn(async move { shard_job(&sched, &session.tasks, &session.events, &tenant, &job, known).await });
}

async fn consumer(connection: &Connection, queue: &str, prefetch: u16) -> anyhow::Result<lapin::Consumer> {
    let channel = connection.create_channel().await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let tag = format!("scheduler-{queue}-{}", std::process::id());
    Ok(channel.basic_consume(queue, &tag, BasicConsumeOptions::default(), FieldTable::default()).await?)
}

async fn settle(delivery: &Delivery, disposition: Disposition) -> anyhow::Result<()> {
    match disposition {
        Disposition::Ack => delivery.ack(BasicAckOptions::default()).await?,
        Disposition::Retry(reason) => {
            tracing::warn!(%reason, "intake message returned for a retry");
            tokio::time::sleep(Duration::from_millis(500)).await;
            delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?
        }
        Disposition::Park(reason) => {
            tracing::warn!(%reason, "intake message parked in {DEAD_QUEUE}");
            delivery.nack(BasicNackOptions { requeue: false, ..Default::default() }).await?
        }
    }
    Ok(())
}

async fn on_report(sched: &Scheduler, session: &Session, delivery: Delivery) {
    let report: Report = match serde_json::from_slice(&delivery.data) {
        Ok(report) => report,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable report parked");
            let _ = delivery.nack(BasicNackOptions { requeue: false, ..Default::default() }).await;
            return;
        }
    };
    match crate::reports::handle(sched, &session.events, report).await {
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
        Ok(message) => crate::reports::dead_lettered(sched, &session.events, &message).await.map_err(|e| e.to_string()),
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
async fn sample_queue_depths(channel: Channel) {
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
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
