//! One attempt at a task on a device, under its lease: skip it if the job was cancelled,
//! report it started, run it (fine-tune, engine or no-op) and report how it ended.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use fleet_protocol::fine_tune::FineTuneSpec;
use fleet_protocol::job::BackgroundSpec;
use fleet_protocol::keys::TenantId;
use fleet_protocol::message::{now_ms, FailureKind, LeaseGrant, Report, TaskMessage, TrainingProgress};
use fleet_protocol::state::JobState;
use fleet_telemetry::metrics;

use super::attribute::Attribution;
use super::config::Executor;
use super::failure::AttemptError;
use super::lanes::Device;
use super::reports::{failed, released, report_to_scheduler};
use super::task::{self, Fence, TaskContext, TaskResult};
use super::{fine_tune, Worker};

/// How an attempt ended, when it did not complete.
pub(super) enum Handback {
    /// The attempt failed; the report carries the failure's kind (retry, or fail the task).
    Failed(AttemptError),
    /// The lease was taken over: stop, write and report nothing.
    Fenced,
    /// A fine-tune saved a checkpoint at this step and gives its device back.
    Yielded(u32),
}

/// Runs an attempt and accounts for how it ended: metrics, logs and the report that hands a
/// task back (failed, or released at a checkpoint).
pub(super) async fn handle(
    worker: &Worker,
    device: &Device,
    task: &TaskMessage,
    lease: &LeaseGrant,
    lost: &Arc<AtomicBool>,
    preempt: &Arc<AtomicBool>,
) {
    let priority = format!("{:?}", task.priority).to_lowercase();
    let timer = metrics::WORKER_TASK_SECONDS.with_label_values(&[&priority]).start_timer();
    match work(worker, device, task, lease, lost, preempt).await {
        Ok(()) => {
            metrics::WORKER_TASKS.with_label_values(&[&priority, "ended"]).inc();
            timer.observe_duration();
        }
        Err(Handback::Failed(failure)) => {
            metrics::WORKER_TASKS.with_label_values(&[&priority, "failed_attempt"]).inc();
            if failure.is_retryable() {
                tracing::warn!(reason = %failure.reason, "attempt failed; the scheduler retries it");
            } else {
                tracing::warn!(reason = %failure.reason, "attempt failed and no retry can pass; the task fails");
            }
            let _ = report_to_scheduler(worker, lost, task.priority, &failed(worker, task, lease, failure)).await;
        }
        Err(Handback::Fenced) => {
            metrics::WORKER_TASKS.with_label_values(&[&priority, "lease_lost"]).inc();
            tracing::warn!("lease lost mid-task: outputs not written, nothing reported");
        }
        Err(Handback::Yielded(step)) => {
            metrics::WORKER_TASKS.with_label_values(&[&priority, "yielded"]).inc();
            tracing::info!(step, "fine-tune checkpointed and gave its device back");
            let report = released(worker, task, lease, Some(step));
            let _ = report_to_scheduler(worker, lost, task.priority, &report).await;
        }
    }
}

/// The attempt from the cancellation check to the completed report.
async fn work(
    worker: &Worker,
    device: &Device,
    task: &TaskMessage,
    lease: &LeaseGrant,
    lost: &Arc<AtomicBool>,
    preempt: &Arc<AtomicBool>,
) -> Result<(), Handback> {
    let tenant = TenantId::new(&task.tenant).map_err(|e| Handback::Failed(AttemptError::permanent(e.to_string())))?;
    let token = lease.token;
    if matches!(worker.jobs.get(&tenant, &task.job).await, Ok(Some(job)) if job.state == JobState::Cancelled) {
        tracing::info!("job cancelled; task skipped");
        let skipped = Report::Skipped { tenant: task.tenant.clone(), job: task.job.clone(), task: task.task, token };
        return report_to_scheduler(worker, lost, task.priority, &skipped).await;
    }
    let id = worker.config.id.clone();
    let (tenant_name, job) = (task.tenant.clone(), task.job.clone());
    let started = Report::Started {
        tenant: tenant_name.clone(),
        job: job.clone(),
        task: task.task,
        attempt: lease.attempt,
        token,
        worker: id.clone(),
        at_ms: now_ms(),
    };
    report_to_scheduler(worker, lost, task.priority, &started).await?;
    let started_at_ms = now_ms();
    let fence = Fence { jobs: &worker.jobs, task_id: task.id(), token, lost };
    let result = match (&task.fine_tune, worker.config.executor) {
        (Some(spec), Executor::Engine) => fine_tune_on(worker, device, task, spec, &fence, lost, preempt).await?,
        (_, Executor::Noop) => {
            // A stand-in for device time, so the dispatch path can be measured with busy workers.
            tokio::time::sleep(worker.config.noop_task_time).await;
            TaskResult { succeeded: task.keys.len() as u64, failures: Vec::new(), manifest: String::new() }
        }
        (None, Executor::Engine) => run_on(worker, device, task, lease, &tenant, &fence).await?,
        (_, Executor::Panic) => panic!("fault injection (--executor panic): task {} dies", task.id()),
    };
    tracing::info!(succeeded = result.succeeded, failed = result.failures.len(), "task done");
    metrics::WORKER_IMAGES.with_label_values(&["ok"]).inc_by(result.succeeded);
    metrics::WORKER_IMAGES.with_label_values(&["failed"]).inc_by(result.failures.len() as u64);
    let completed = Report::Completed {
        tenant: tenant_name,
        job,
        task: task.task,
        attempt: lease.attempt,
        token,
        worker: id,
        succeeded: result.succeeded,
        failures: result.failures,
        manifest: result.manifest,
        started_at_ms,
        finished_at_ms: now_ms(),
    };
    report_to_scheduler(worker, lost, task.priority, &completed).await
}

/// A fine-tune on the device, relaying its progress to the scheduler; it yields when
/// `preempt` is set.
async fn fine_tune_on(
    worker: &Worker,
    device: &Device,
    task: &TaskMessage,
    spec: &FineTuneSpec,
    fence: &Fence<'_>,
    lost: &Arc<AtomicBool>,
    preempt: &Arc<AtomicBool>,
) -> Result<TaskResult, Handback> {
    let (priority, token) = (task.priority, fence.token);
    let job = format!("{}/{}", task.tenant, task.job);
    let gauges = job.as_str();
    let relay = move |progress: TrainingProgress| {
        record_training(gauges, &progress);
        let report = fine_tune::report_for(task, token, progress);
        Box::pin(async move {
            let _ = report_to_scheduler(worker, lost, priority, &report).await;
        }) as futures::future::BoxFuture<'_, ()>
    };
    let ctx = fine_tune::FineTuneContext {
        s3: &worker.s3,
        model_cache: &worker.config.model_cache,
        device: device.config.spec,
        fence,
        progress: &relay,
        yield_now: preempt.clone(),
    };
    let ended = fine_tune::run(&ctx, task, spec).await;
    forget_training(&job);
    match ended {
        Ok(fine_tune::Ended::Trained(result)) => Ok(result),
        Ok(fine_tune::Ended::Yielded { step }) => Err(Handback::Yielded(step)),
        Err(e) => Err(handback(e, fence)),
    }
}

/// Sets the fine-tune gauges (`fleet_finetune_*{job}`) from a progress report's last step.
fn record_training(job: &str, progress: &TrainingProgress) {
    use fleet_telemetry::metrics::{FINETUNE_LEARNING_RATE, FINETUNE_LOSS, FINETUNE_STEP};
    if let Some(last) = progress.steps.last() {
        FINETUNE_LOSS.with_label_values(&[job, &last.phase.to_string()]).set(last.loss);
        FINETUNE_LEARNING_RATE.with_label_values(&[job]).set(last.lr);
    }
    FINETUNE_STEP.with_label_values(&[job]).set(f64::from(progress.step));
}

/// Drops a fine-tune's gauges once it ends here (its curves stay in the model's folder).
fn forget_training(job: &str) {
    use fleet_telemetry::metrics::{FINETUNE_LEARNING_RATE, FINETUNE_LOSS, FINETUNE_STEP};
    for phase in ["1", "2"] {
        let _ = FINETUNE_LOSS.remove_label_values(&[job, phase]);
    }
    let _ = FINETUNE_LEARNING_RATE.remove_label_values(&[job]);
    let _ = FINETUNE_STEP.remove_label_values(&[job]);
}

/// An image task on the device's warm engine (and its background generator, for generate
/// jobs).
async fn run_on(
    worker: &Worker,
    device: &Device,
    task: &TaskMessage,
    lease: &LeaseGrant,
    tenant: &TenantId,
    fence: &Fence<'_>,
) -> Result<TaskResult, Handback> {
    let (engine, matting) =
        device.models.get(&worker.s3, tenant, &task.model).await.map_err(|e| Handback::Failed(e.into()))?;
    // Outputs owe their look to the generator of a generate job, else to the matting model.
    let (generator, attribution) = match &task.background {
        BackgroundSpec::Generate(g) => {
            let (generator, lineage) =
                device.models.generator(&worker.s3, tenant, &g.model).await.map_err(|e| Handback::Failed(e.into()))?;
            (
                Some(generator),
                Attribution { model: g.model.clone(), training_set: lineage.training_set, ..Default::default() },
            )
        }
        _ => {
            (None, Attribution { model: task.model.clone(), training_set: matting.training_set, ..Default::default() })
        }
    };
    let attribution =
        Attribution { embedding_space: matting.embedding_space, ledger: worker.ledger.as_ref(), ..attribution };
    let ctx = TaskContext {
        s3: &worker.s3,
        engine,
        worker: &worker.config.id,
        attempt: lease.attempt,
        fence,
        generator,
        attribution,
        signer: worker.config.signer.as_deref(),
    };
    match task::run(&ctx, task).await {
        Ok(result) => Ok(result),
        Err(e) => Err(handback(e, fence)),
    }
}

/// How a failed attempt ends: quietly when the lease was lost (the task's new holder carries
/// on), otherwise with a report of the failure and its kind.
fn handback(failure: AttemptError, fence: &Fence<'_>) -> Handback {
    if fence.is_lost() || failure.kind == FailureKind::Fenced {
        Handback::Fenced
    } else {
        Handback::Failed(failure)
    }
}
