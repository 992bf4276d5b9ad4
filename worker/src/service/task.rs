//! One task on a worker: inputs from S3 with bounded concurrency, the engine on a blocking
//! thread, then per image the result, matte and embedding, and last the task manifest. The
//! lease is checked before the outputs and again before the manifest, so a worker whose task
//! was taken over writes nothing after it learns so. Output keys come from the input keys, so
//! a re-dispatched task rewrites the same objects; the scheduler counts the task once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_imaging::composite::{Background, CompositeOptions};
use fleet_imaging::decode::{decode, DecodeLimits};
use fleet_imaging::encode::OutputFormat;
use fleet_protocol::job::{BackgroundSpec, OutputFormatName, OutputSpec, Priority};
use fleet_protocol::keys::{attribution_key, check_tenant_key, output_keys, task_manifest_key, variant_keys, TenantId};
use fleet_protocol::message::{now_ms, ItemFailureReport, TaskMessage};
use fleet_store::s3::S3Store;
use fleet_store::{content_type, ObjectStore, StoreError};
use futures::{stream, StreamExt, TryStreamExt};
use serde::Serialize;

use fleet_engine::folder::npy_f32;

pub use super::failure::AttemptError;
use fleet_engine::{Engine, EngineOptions, InputItem, ItemRecord};

use super::attribute::{attribute_outputs, Attribution, OutputEmbedding, Summary};

/// Objects fetched or written at once per task.
pub const IO_CONCURRENCY: usize = 8;
/// Tries of one object operation on a retryable error.
const IO_TRIES: u32 = 3;

/// What a finished task produced.
#[derive(Debug, Clone)]
pub struct TaskResult {
    /// Items with outputs.
    pub succeeded: u64,
    /// Items without, with reasons.
    pub failures: Vec<ItemFailureReport>,
    /// Key of the task manifest.
    pub manifest: String,
}

/// The per-task manifest written next to the results.
#[derive(Debug, Serialize)]
struct TaskManifest<'a> {
    tenant: &'a str,
    job: &'a str,
    task: u32,
    attempt: u32,
    worker: &'a str,
    model: &'a str,
    started_at_ms: u64,
    finished_at_ms: u64,
    items: Vec<ManifestItem>,
    failures: &'a [ItemFailureReport],
}

#[derive(Debug, Serialize)]
struct ManifestItem {
    input_key: String,
    result_key: String,
    matte_key: String,
    embedding_key: String,
    download_ms: f64,
    upload_ms: f64,
    /// Download, engine stages and upload of this image.
    latency_ms: f64,
    /// Generated results after the first (`result_key` is the first).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    variants: Vec<VariantItem>,
    /// Whose training images the result owes its look to.
    attribution: Option<Summary>,
    /// Whether the result images carry a signed C2PA manifest.
    content_credentials: bool,
    #[serde(flatten)]
    record: ItemRecord,
}

/// Where one more generated result of an item went.
#[derive(Debug, Serialize)]
struct VariantItem {
    result_key: String,
    embedding_key: String,
    seed: u64,
    attribution: Option<Summary>,
}

/// The task's lease, checked before outputs are written: a worker that lost its lease (the
/// scheduler took the task over while it was silent) writes nothing.
pub struct Fence<'a> {
    /// Where leases live.
    pub jobs: &'a fleet_state::RedisJobStore,
    /// The task's id.
    pub task_id: String,
    /// The token the worker was given.
    pub token: u64,
    /// Set by the heartbeat when a renewal finds the lease gone.
    pub lost: &'a std::sync::atomic::AtomicBool,
}

impl Fence<'_> {
    /// Whether the lease is known to be lost.
    pub fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fails unless the lease still carries the worker's token.
    pub async fn check(&self) -> Result<(), AttemptError> {
        if !self.is_lost() {
            match self.jobs.lease_token(&self.task_id).await {
                Ok(Some(token)) if token == self.token => return Ok(()),
                Ok(_) => self.lost.store(true, std::sync::atomic::Ordering::Relaxed),
                Err(e) => return Err(AttemptError::retry(format!("lease unreadable: {e}"))),
            }
        }
        Err(AttemptError::fenced(format!("lease of {} taken over (token {} is stale)", self.task_id, self.token)))
    }
}

/// Where a task runs: its store, engine and identity.
pub struct TaskContext<'a> {
    /// The object store.
    pub s3: &'a S3Store,
    /// The warm engine for the task's model.
    pub engine: Arc<Engine>,
    /// This worker's id.
    pub worker: &'a str,
    /// Attempt number.
    pub attempt: u32,
    /// The task's lease.
    pub fence: &'a Fence<'a>,
    /// The background generator, warm on the same device, for generate jobs.
    pub generator: Option<Arc<fleet_engine::generate::Generator>>,
    /// What outputs are attributed to, and the ledger they are recorded in.
    pub attribution: Attribution<'a>,
    /// Signs each result's content credentials (C2PA), if the worker has a key.
    pub signer: Option<&'a fleet_credentials::Signer>,
}

/// The compositor's shadow for a job's.
fn shadow(spec: fleet_protocol::job::ShadowSpec) -> fleet_imaging::composite::Shadow {
    use fleet_imaging::composite::ShadowKind;
    use fleet_protocol::job::ShadowKindName;
    fleet_imaging::composite::Shadow {
        kind: match spec.kind {
            ShadowKindName::Drop => ShadowKind::Drop,
            ShadowKindName::Contact => ShadowKind::Contact,
        },
        opacity: spec.opacity,
        blur_pct: spec.blur_pct,
        offset_pct: spec.offset_pct,
    }
}

/// How long a batch task's forward pass may wait for other tasks' images on a GPU, so lanes
/// sharing a device fill one batch; interactive work never waits, and neither does the CPU
/// (a bigger batch there buys no throughput).
const GPU_BATCH_LINGER: Duration = Duration::from_millis(4);

fn batch_linger(priority: Priority, device: tch::Device) -> Duration {
    match (priority, device.is_cuda()) {
        (Priority::Batch, true) => GPU_BATCH_LINGER,
        _ => Duration::ZERO,
    }
}

/// Runs the task and writes its outputs; item problems are failures in the result, store or
/// device problems fail the attempt.
pub async fn run(ctx: &TaskContext<'_>, task: &TaskMessage) -> Result<TaskResult, AttemptError> {
    let started_at_ms = now_ms();
    let tenant = TenantId::new(&task.tenant).map_err(|e| AttemptError::permanent(e.to_string()))?;
    let limits = DecodeLimits::default();
    let opts = EngineOptions {
        composite: CompositeOptions {
            background: background(ctx.s3, &tenant, &task.background, &limits).await?,
            shadow: task.shadow.map(shadow),
            ..Default::default()
        },
        format: output_format(&task.output),
        max_side: task.output.max_side,
        generate: match &task.background {
            BackgroundSpec::Generate(spec) => Some(generate_job(ctx, &tenant, spec, &limits).await?),
            _ => None,
        },
        limits,
        batch_linger: batch_linger(task.priority, ctx.engine.inference().device()),
        ..Default::default()
    };
    let mut failures = Vec::new();
    let fetched: Vec<(String, Fetched)> = stream::iter(task.keys.iter().cloned())
        .map(|key| {
            let tenant = tenant.clone();
            async move {
                let item = fetch_item(ctx.s3, &tenant, &key, limits.max_file_bytes).await?;
                Ok::<_, AttemptError>((key, item))
            }
        })
        .buffered(IO_CONCURRENCY)
        .try_collect()
        .await?;
    let mut inputs = Vec::new();
    let mut download_ms = std::collections::HashMap::new();
    for (key, item) in fetched {
        match item {
            Ok((bytes, ms)) => {
                download_ms.insert(key.clone(), ms);
                inputs.push(InputItem { id: key, bytes });
            }
            Err(failure) => failures.push(failure),
        }
    }
    let engine = ctx.engine.clone();
    let results = tokio::task::spawn_blocking(move || engine.process_batch(inputs, &opts))
        .await
        .map_err(|e| AttemptError::retry(format!("engine thread: {e}")))?
        .map_err(|e| AttemptError::engine(&e))?;
    let extension = match task.output.format {
        OutputFormatName::Png => "png",
        OutputFormatName::Jpeg => "jpg",
        OutputFormatName::Webp => "webp",
    };
    // Outputs are written only under a lease that still stands.
    ctx.fence.check().await?;
    let mut outputs = Vec::new();
    for result in results {
        match result {
            Ok(output) => outputs.push(output),
            Err(f) => failures.push(ItemFailureReport { key: f.id, code: f.code, reason: f.reason }),
        }
    }
    // Every output's embedding, for attribution once the outputs are written.
    let mut embeddings = Vec::new();
    for output in &outputs {
        let id = &output.record.id;
        let (result_key, _, _) = output_keys(&tenant, &task.job, id, extension);
        embeddings.push(OutputEmbedding {
            item: id.clone(),
            k: 0,
            output_key: result_key,
            embedding: output.embedding.clone(),
        });
        for (k, variant) in output.variants.iter().enumerate() {
            let (result_key, _) = variant_keys(&tenant, &task.job, id, extension, k + 1);
            embeddings.push(OutputEmbedding {
                item: id.clone(),
                k: k + 1,
                output_key: result_key,
                embedding: variant.embedding.clone(),
            });
        }
    }
    let mut items: Vec<ManifestItem> = stream::iter(outputs)
        .map(|output| {
            let tenant = tenant.clone();
            let download = download_ms.get(&output.record.id).copied().unwrap_or(0.0);
            async move {
                let (result_key, matte_key, embedding_key) =
                    output_keys(&tenant, &task.job, &output.record.id, extension);
                let started = Instant::now();
                let image_type = content_type(&result_key);
                let generator = output.record.generated.as_ref().map(|g| g.generator.as_str());
                let image = credentials(ctx, task, &output.record.id, 0, generator, output.image, image_type)?;
                put_fenced(ctx, &result_key, image, image_type).await?;
                put_fenced(ctx, &matte_key, output.matte_png, "image/png").await?;
                put_fenced(ctx, &embedding_key, npy_f32(&output.embedding), "application/octet-stream").await?;
                let mut variants = Vec::with_capacity(output.variants.len());
                for (k, variant) in output.variants.iter().enumerate() {
                    let (result_key, embedding_key) =
                        variant_keys(&tenant, &task.job, &output.record.id, extension, k + 1);
                    let image =
                        credentials(ctx, task, &output.record.id, k + 1, generator, variant.image.clone(), image_type)?;
                    put_fenced(ctx, &result_key, image, image_type).await?;
                    put_fenced(ctx, &embedding_key, npy_f32(&variant.embedding), "application/octet-stream").await?;
                    variants.push(VariantItem { result_key, embedding_key, seed: variant.seed, attribution: None });
                }
                let upload_ms = started.elapsed().as_secs_f64() * 1e3;
                let t = &output.record.timings_ms;
                let latency_ms = download + t.cpu_ms() + t.forward_ms + t.generate_ms + upload_ms;
                Ok::<_, AttemptError>(ManifestItem {
                    input_key: output.record.id.clone(),
                    result_key,
                    matte_key,
                    embedding_key,
                    download_ms: download,
                    upload_ms,
                    latency_ms,
                    variants,
                    attribution: None,
                    content_credentials: ctx.signer.is_some(),
                    record: output.record,
                })
            }
        })
        .buffered(IO_CONCURRENCY)
        .try_collect()
        .await?;
    let mut summaries = attribute_outputs(ctx, &tenant, task, embeddings).await?;
    for item in &mut items {
        item.attribution = summaries.remove(&item.result_key);
        for variant in &mut item.variants {
            variant.attribution = summaries.remove(&variant.result_key);
        }
    }
    let succeeded = items.len() as u64;
    let manifest_key = task_manifest_key(&tenant, &task.job, task.task);
    let model = ctx.engine.inference().manifest().model_ref().to_string();
    let manifest = TaskManifest {
        tenant: &task.tenant,
        job: &task.job,
        task: task.task,
        attempt: ctx.attempt,
        worker: ctx.worker,
        model: &model,
        started_at_ms,
        finished_at_ms: now_ms(),
        items,
        failures: &failures,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("a task manifest serialises");
    put_fenced(ctx, &manifest_key, json, "application/json").await?;
    Ok(TaskResult { succeeded, failures, manifest: manifest_key })
}

/// `image` with a signed C2PA manifest naming the model, the generator, the job and the
/// attribution record of result `k` of `item`; as it is when the worker has no key.
fn credentials(
    ctx: &TaskContext<'_>,
    task: &TaskMessage,
    item: &str,
    k: usize,
    generator: Option<&str>,
    image: Vec<u8>,
    image_type: &str,
) -> Result<Vec<u8>, AttemptError> {
    let Some(signer) = ctx.signer else { return Ok(image) };
    let tenant = TenantId::new(&task.tenant).map_err(|e| AttemptError::permanent(e.to_string()))?;
    let attribution = attribution_key(&tenant, &task.job, item, k);
    let claim = fleet_credentials::Claim {
        tenant: &task.tenant,
        job: &task.job,
        item,
        model: &task.model,
        generator,
        attribution: Some(&attribution),
        worker: ctx.worker,
    };
    fleet_credentials::sign(&image, image_type, &claim, signer)
        .map_err(|e| AttemptError::permanent(format!("signing the content credentials of {item}: {e}")))
}

/// The generator and settings of a generate job; the reference image is read once per task.
async fn generate_job(
    ctx: &TaskContext<'_>,
    tenant: &TenantId,
    spec: &fleet_protocol::job::GenerateSpec,
    limits: &DecodeLimits,
) -> Result<fleet_engine::generate::GenerateJob, AttemptError> {
    use fleet_protocol::job::SamplingPreset;
    let generator =
        ctx.generator.clone().ok_or_else(|| AttemptError::retry("no generator was loaded for a generate job"))?;
    let reference = match &spec.reference_image {
        Some(key) => {
            check_tenant_key(tenant, key).map_err(|e| AttemptError::permanent(e.to_string()))?;
            let bytes = get(ctx.s3, key, limits.max_file_bytes)
                .await
                .map_err(|e| AttemptError::store("reference image", &e))?;
            Some(
                decode(&bytes, limits).map_err(|e| AttemptError::permanent(format!("reference image {key}: {e}")))?.rgb,
            )
        }
        None => None,
    };
    let (steps, guidance) = spec.steps_and_guidance(generator.spec.guidance);
    Ok(fleet_engine::generate::GenerateJob {
        generator,
        options: fleet_engine::generate::GenerateOptions {
            prompt: spec.prompt.clone(),
            negative_prompt: spec.negative_prompt.clone(),
            reference,
            seed: spec.seed,
            steps,
            guidance,
            results: spec.results,
            sampler: match spec.sampling {
                SamplingPreset::Fast => fleet_engine::diffusion::SamplerKind::Ddim { eta: 0.0 },
                SamplingPreset::Quality => fleet_engine::diffusion::SamplerKind::Euler,
            },
            dilate_pct: GENERATE_MARGIN_PCT,
        },
    })
}

/// Margin kept around the product when its background is generated, percent of the long
/// side: the product's soft edge is composited over the new background, never generated.
const GENERATE_MARGIN_PCT: f32 = 2.0;

/// An input's bytes and download time, or why it has none.
type Fetched = Result<(Vec<u8>, f64), ItemFailureReport>;

/// Fetches one input: an item failure when the key is not the tenant's or not there, an
/// attempt failure when the store keeps failing.
/// One input's bytes, read only if it is at most `max` bytes long (a larger object fails its
/// item without being read).
async fn fetch_item(s3: &S3Store, tenant: &TenantId, key: &str, max: u64) -> Result<Fetched, AttemptError> {
    let fail =
        |code: &str, reason: String| Ok(Err(ItemFailureReport { key: key.to_string(), code: code.into(), reason }));
    if let Err(e) = check_tenant_key(tenant, key) {
        return fail("invalid_key", e.to_string());
    }
    let started = Instant::now();
    match get(s3, key, max).await {
        Ok(bytes) => Ok(Ok((bytes, started.elapsed().as_secs_f64() * 1e3))),
        Err(StoreError::NotFound { .. }) => fail("not_found", format!("no object at {key}")),
        Err(StoreError::TooLarge { size, max, .. }) => {
            fail("too_large", format!("{key} is {size} bytes, over the {max}-byte input cap"))
        }
        Err(e) if e.is_retryable() => Err(AttemptError::retry(e.to_string())),
        Err(e) => fail("store_error", e.to_string()),
    }
}

async fn get(s3: &S3Store, key: &str, max: u64) -> Result<Vec<u8>, StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match s3.get_capped(key, max).await {
            Err(e) if e.is_retryable() && tries < IO_TRIES => backoff(tries).await,
            other => return other,
        }
    }
}

/// Writes one output under a lease checked just before: a worker paused or cut off past its
/// lease finds it taken over at its next write, not only once before thousands of them. What
/// remains is the one write in flight when the pause began (see RELIABILITY.md).
pub(super) async fn put_fenced(
    ctx: &TaskContext<'_>,
    key: &str,
    bytes: Vec<u8>,
    content_type: &str,
) -> Result<(), AttemptError> {
    ctx.fence.check().await?;
    let lease = format!("{} {}", ctx.fence.task_id, ctx.fence.token);
    let mut tries = 0;
    loop {
        tries += 1;
        match ctx.s3.put_written_by(key, bytes.clone(), content_type, &lease).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && tries < IO_TRIES => backoff(tries).await,
            Err(e) => return Err(AttemptError::store(&format!("writing {key}"), &e)),
        }
    }
}

async fn backoff(tries: u32) {
    tokio::time::sleep(std::time::Duration::from_millis(100 << tries.min(5))).await;
}

/// The engine's background for a job's spec; an image background is read from the
/// tenant's space once per task.
async fn background(
    s3: &S3Store,
    tenant: &TenantId,
    spec: &BackgroundSpec,
    limits: &DecodeLimits,
) -> Result<Background, AttemptError> {
    Ok(match spec {
        BackgroundSpec::Transparent => Background::Transparent,
        BackgroundSpec::Color { color } => {
            Background::Color(fleet_protocol::job::parse_hex_color(color).map_err(AttemptError::permanent)?)
        }
        BackgroundSpec::Blur { strength_pct } => Background::Blur { sigma_pct: *strength_pct },
        // Generated per image by the engine; this is what a cut-out falls back to.
        BackgroundSpec::Generate(_) => Background::Transparent,
        BackgroundSpec::Image { key } => {
            check_tenant_key(tenant, key).map_err(|e| AttemptError::permanent(e.to_string()))?;
            let bytes =
                get(s3, key, limits.max_file_bytes).await.map_err(|e| AttemptError::store("background image", &e))?;
            let decoded =
                decode(&bytes, limits).map_err(|e| AttemptError::permanent(format!("background image {key}: {e}")))?;
            Background::Image(Arc::new(decoded.rgb))
        }
    })
}

fn output_format(spec: &OutputSpec) -> OutputFormat {
    match spec.format {
        OutputFormatName::Png => OutputFormat::Png,
        OutputFormatName::Jpeg => OutputFormat::Jpeg { quality: spec.quality },
        OutputFormatName::Webp => OutputFormat::Webp,
    }
}
