//! A `fine_tune` task on a worker: the data set from S3, the base model from the registry,
//! training on a thread of its own, checkpoints to S3 under the task's lease, and the
//! trained model registered in the tenant's own registry. The training itself is `fleet_train`'s;
//! this module feeds it and carries its results. `target: background_generator` goes to
//! [`generator`], which shares the checkpoint storage and the reports.
//!
//! ```text
//! data set (JSON lines) --> refusals (no licence, no contributor, bad key, unreadable,
//!                          mask not matching its image)
//!   --> samples (image + mask) --> validation split (seeded)
//!   --> [resume from <tenant>/training/<job>/checkpoint/ if there is one]
//!   --> phase 1 (every sample) --> mask-quality scores of every training mask against the
//!       phase-1 model --> phase 2 (score >= threshold only); each phase: linear warm-up +
//!       schedule, AdamW, aspect-ratio buckets at the pixel budget
//!        every `checkpoint_every` steps: module + optimiser + state --> S3 (lease checked)
//!        progress reports: every step's loss and learning rate
//!   --> validation IoU / MAE after each phase --> model.pt (TorchScript, parameters)
//!   --> <tenant>/models/<name>/<version>/ : model, manifest (parent, data digest, counts,
//!       hyper-parameters, metrics), training-set embeddings with contributors, loss curve
//!   --> <tenant>/results/<job>/fine-tune.json : the whole report
//! ```

mod generator;
mod report;
mod storage;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use fleet_protocol::fine_tune::{parse_dataset, FineTuneSpec, Refusal, Target};
use fleet_protocol::keys::{results_prefix, TenantId};
use fleet_protocol::limits::{MAX_DATASET_BYTES, MAX_DATASET_SAMPLES};
use fleet_protocol::manifest::ModelRef;
use fleet_protocol::message::{TaskMessage, TrainingProgress};
use fleet_protocol::DeviceSpec;
use fleet_store::s3::S3Store;
use fleet_store::{ObjectStore, StoreError};
use fleet_train::matting::{Loaded, TrainJob};
use fleet_train::progress::{Event, Trained, Trainer};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::failure::AttemptError;
use super::task::{Fence, TaskResult};
pub use report::report_for;
use report::{finished_without_model, register, summarize, write_report, Run};
use storage::{download_checkpoint, fetch_model, load_sample, relay, sha256_hex};

/// Samples fetched from S3 at once.
const SAMPLE_FETCHES: usize = 8;

/// Everything a task needs to run a fine-tune.
pub struct FineTuneContext<'a> {
    /// The object store.
    pub s3: &'a S3Store,
    /// Where models are cached on this host.
    pub model_cache: &'a Path,
    /// The device the lease placed it on.
    pub device: DeviceSpec,
    /// The task's lease.
    pub fence: &'a Fence<'a>,
    /// Sends a report (progress) to the scheduler.
    pub progress: &'a (dyn Fn(TrainingProgress) -> futures::future::BoxFuture<'a, ()> + Sync),
    /// Set when the fine-tune must give its device back (preempted, or the worker drains):
    /// it saves a checkpoint at the next step boundary and stops.
    pub yield_now: std::sync::Arc<AtomicBool>,
}

/// How a fine-tune attempt ended.
pub enum Ended {
    /// Trained and registered; its one item is the model.
    Trained(TaskResult),
    /// Saved a checkpoint at `step` and gave the device back; it resumes from there.
    Yielded {
        /// The checkpoint's step.
        step: u32,
    },
}

/// Runs the fine-tune of `task`; its one item is the registered model.
pub async fn run(ctx: &FineTuneContext<'_>, task: &TaskMessage, spec: &FineTuneSpec) -> Result<Ended, AttemptError> {
    let started = Instant::now();
    let tenant = TenantId::new(&task.tenant).map_err(|e| AttemptError::permanent(e.to_string()))?;
    let results = results_prefix(&tenant, &task.job);
    let checkpoint_prefix = format!("{tenant}/training/{}/checkpoint/", task.job);
    let fail = AttemptError::retry;

    // The data set: refusals are reported, never trained on.
    let text = match ctx.s3.get_capped(&spec.data, MAX_DATASET_BYTES).await {
        Ok(bytes) => String::from_utf8(bytes)
            .map_err(|e| AttemptError::permanent(format!("data set {} is not UTF-8: {e}", spec.data)))?,
        Err(StoreError::NotFound { .. }) => {
            return finished_without_model(ctx, &results, task, spec, "no data set at that key")
                .await
                .map(Ended::Trained)
        }
        Err(StoreError::TooLarge { size, max, .. }) => {
            let reason = format!("the data set is {size} bytes, over the {max}-byte cap; nothing was trained");
            return finished_without_model(ctx, &results, task, spec, &reason).await.map(Ended::Trained);
        }
        Err(e) => return Err(AttemptError::store("data set", &e)),
    };
    let lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).count();
    if lines > MAX_DATASET_SAMPLES {
        let reason =
            format!("the data set lists {lines} samples, over the cap of {MAX_DATASET_SAMPLES}; nothing was trained");
        return finished_without_model(ctx, &results, task, spec, &reason).await.map(Ended::Trained);
    }
    let digest = sha256_hex(text.as_bytes());
    let (listed, mut refusals) = parse_dataset(&text, &tenant, spec.target, task.allowed_licences.as_deref());
    if spec.target == Target::BackgroundGenerator {
        return generator::run(ctx, task, spec, listed, refusals, digest).await;
    }
    // Fetched and decoded eight samples at a time, in data-set order.
    let mut loaded = Vec::new();
    let mut fetches = futures::stream::iter(listed)
        .map(|(line, sample)| async move { (line, load_sample(ctx.s3, &sample).await, sample) })
        .buffered(SAMPLE_FETCHES);
    while let Some((line, fetched, sample)) = fetches.next().await {
        match fetched? {
            Ok((rgb, mask)) => loaded.push(Loaded { line, sample, rgb, mask }),
            Err((code, reason)) => refusals.push(Refusal { line, image: sample.image.clone(), code, reason }),
        }
    }
    drop(fetches);
    let min_samples = 2;
    if loaded.len() < min_samples {
        let reason = format!("{} usable samples; a fine-tune needs at least {min_samples}", loaded.len());
        return finished_without_model(ctx, &results, task, spec, &reason).await.map(|mut r| {
            r.failures[0].reason = format!("{reason}; refused: {}", summarize(&refusals));
            Ended::Trained(r)
        });
    }

    // The base model and the checkpoint to resume from, if any.
    let base_ref: ModelRef = task.model.parse().map_err(|e| AttemptError::permanent(format!("base model: {e}")))?;
    let base_dir = fetch_model(ctx, &tenant, &base_ref).await?;
    let work = tempfile::tempdir().map_err(|e| fail(format!("work folder: {e}")))?;
    let resume = download_checkpoint(ctx.s3, &checkpoint_prefix, work.path()).await?;
    if let Some(state) = &resume {
        tracing::info!(step = state.step, "resuming the fine-tune from its last checkpoint");
    }

    let out = Outputs {
        tenant: &tenant,
        spec,
        results: &results,
        checkpoint_prefix: &checkpoint_prefix,
        base: &base_ref,
        base_dir: &base_dir,
        embedder_dir: None,
        digest: &digest,
        refusals: &refusals,
        started,
    };
    let job = TrainJob {
        samples: loaded,
        hyper: spec.hyper.clone(),
        base_dir: base_dir.clone(),
        device: ctx.device,
        work: work.path().to_path_buf(),
        resume,
        output: spec.output.model_ref(),
        parent: base_ref.clone(),
        stop: std::sync::Arc::new(AtomicBool::new(false)),
        yield_now: ctx.yield_now.clone(),
    };
    train_and_report(ctx, job, out).await
}

/// Where a fine-tune's model and report go, and what the report says about the run.
struct Outputs<'a> {
    tenant: &'a TenantId,
    spec: &'a FineTuneSpec,
    results: &'a str,
    checkpoint_prefix: &'a str,
    base: &'a ModelRef,
    /// The base model's folder (its training set is inherited).
    base_dir: &'a Path,
    /// The matting model that embedded the training samples; `None`: the trained model.
    embedder_dir: Option<&'a Path>,
    digest: &'a str,
    refusals: &'a [Refusal],
    started: Instant,
}

/// Runs a training loop on a thread of its own while the task uploads its checkpoints under
/// the lease and relays its progress; then registers the model and writes the report, or
/// hands back the step it yielded at.
async fn train_and_report<T: Trainer>(
    ctx: &FineTuneContext<'_>,
    job: T,
    out: Outputs<'_>,
) -> Result<Ended, AttemptError> {
    let stop = job.stop_flag();
    let (tx, rx) = mpsc::channel::<Event>(4);
    let trainer = tokio::task::spawn_blocking(move || job.run(&tx));
    let checkpoint_s = relay(ctx, out.checkpoint_prefix, rx, &stop).await;
    let trained = trainer.await.map_err(|e| AttemptError::retry(format!("training thread: {e}")))?;
    let mut outcome = match trained.map_err(AttemptError::retry)? {
        Trained::Done(outcome) => outcome,
        Trained::Yielded(step) => return Ok(Ended::Yielded { step }),
    };
    // The lineage's training set goes into the model folder before it is registered.
    let (dir, parent) = (outcome.dir.clone(), out.base_dir.to_path_buf());
    let embedder = out.embedder_dir.map_or_else(|| dir.clone(), Path::to_path_buf);
    outcome.report["training_set"] =
        tokio::task::spawn_blocking(move || super::lineage::build_training_set(&dir, &parent, &embedder))
            .await
            .map_err(|e| AttemptError::retry(format!("training set thread: {e}")))??;
    let model_prefix = register(ctx, out.tenant, out.spec, &outcome.dir).await?;
    let run = Run { base: out.base, digest: out.digest, refusals: out.refusals, checkpoint_s, started: out.started };
    write_report(ctx, out.results, out.spec, &model_prefix, &outcome, &run).await.map(Ended::Trained)
}
