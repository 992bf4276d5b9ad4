//! The inference thread: one OS thread per device owns the model and runs every forward
//! pass, so async code and the CPU stages never block on libtorch and the model is never
//! shared across threads.
//!
//! Dynamic batching: requests from every task on the device queue here, and the thread
//! runs what is waiting as one pass (up to the manifest's `max_batch` images). A request may
//! let the pass wait for company up to its own `linger`; interactive work sends zero, so it
//! only ever joins requests that are already queued and never waits for one.

use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use fleet_protocol::{DeviceSpec, ModelManifest};
use tch::{Device, Tensor};

use super::model::{ForwardOutput, LoadedModel};
use super::EngineError;

/// Resolves a configured device to a libtorch device, checking that it exists.
pub fn resolve_device(spec: DeviceSpec) -> Result<Device, EngineError> {
    let cuda_devices = if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto if cuda_devices > 0 => Ok(Device::Cuda(0)),
        DeviceSpec::Auto => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) if n < cuda_devices => Ok(Device::Cuda(n)),
        DeviceSpec::Cuda(n) => Err(EngineError::Device {
            spec: spec.to_string(),
            reason: format!("cuda:{n} requested but {cuda_devices} CUDA devices are usable here"),
        }),
    }
}

/// A forward pass result with the time the device spent on it.
#[derive(Debug)]
pub struct Timed {
    /// What the model returned.
    pub output: ForwardOutput,
    /// Wall time of the forward pass, host-to-device copy and read-back included (this
    /// request's share, by images, when the pass was shared).
    pub elapsed: Duration,
    /// Images in the pass: this request's own, or more when requests were batched together.
    pub batch: usize,
}

/// A batch of images as it travels to the inference thread.
#[derive(Debug)]
pub enum BatchInput {
    /// Normalised planes `[count,3,H,W]`, float32 (normalised on the CPU).
    Normalized(Vec<f32>),
    /// Resized 8-bit RGB `[count,H,W,3]`, normalised on the model's device: a quarter of the
    /// bytes to copy, from pinned memory without blocking on a GPU.
    Pixels(Vec<u8>),
}

impl BatchInput {
    fn len(&self) -> usize {
        match self {
            BatchInput::Normalized(v) => v.len(),
            BatchInput::Pixels(v) => v.len(),
        }
    }
}

struct Request {
    input: BatchInput,
    count: usize,
    linger: Duration,
    reply: Sender<Result<Timed, EngineError>>,
}

/// Requests that may wait in the queue of one device.
const QUEUE: usize = 64;

/// Handle to the thread that owns a model on one device.
pub struct InferenceThread {
    tx: Option<Sender<Request>>,
    join: Option<JoinHandle<()>>,
    manifest: ModelManifest,
    device: Device,
}

impl InferenceThread {
    /// Starts the thread and loads the model there; returns once the model is ready.
    pub fn start(model_dir: &Path, spec: DeviceSpec) -> Result<Self, EngineError> {
        let device = resolve_device(spec)?;
        let (tx, rx) = bounded::<Request>(QUEUE);
        let (ready_tx, ready_rx) = bounded(1);
        let dir = model_dir.to_path_buf();
        let join = std::thread::Builder::new()
            .name(format!("inference-{device:?}"))
            .spawn(move || {
                let model = match LoadedModel::load(&dir, device) {
                    Ok(model) => {
                        let _ = ready_tx.send(Ok(model.manifest.clone()));
                        model
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let max_batch = model.manifest.max_batch.map_or(usize::MAX, |b| b as usize);
                while let Ok(first) = rx.recv() {
                    let mut deadline = Instant::now() + first.linger;
                    let mut images = first.count;
                    let mut group = vec![first];
                    while images < max_batch {
                        let wait = deadline.saturating_duration_since(Instant::now());
                        let next = if wait.is_zero() { rx.try_recv().ok() } else { rx.recv_timeout(wait).ok() };
                        let Some(req) = next else { break };
                        deadline = deadline.min(Instant::now() + req.linger);
                        images += req.count;
                        group.push(req);
                    }
                    serve(&model, group);
                }
            })
            .map_err(|e| EngineError::Device { spec: spec.to_string(), reason: e.to_string() })?;
        let manifest = ready_rx.recv().map_err(|_| EngineError::Stopped)??;
        Ok(InferenceThread { tx: Some(tx), join: Some(join), manifest, device })
    }

    /// The loaded model's manifest.
    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    /// The device the thread runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Runs `count` images given as one normalised `[count,3,H,W]` buffer; blocks until done.
    /// Joins whatever other requests are queued on the device, and waits for none.
    pub fn infer(&self, input: Vec<f32>, count: usize) -> Result<Timed, EngineError> {
        self.infer_within(BatchInput::Normalized(input), count, Duration::ZERO)
    }

    /// [`infer`](Self::infer) of either kind of input, letting the pass wait up to `linger`
    /// for other requests to fill the batch.
    pub fn infer_within(&self, input: BatchInput, count: usize, linger: Duration) -> Result<Timed, EngineError> {
        let (reply, rx) = bounded(1);
        let tx = self.tx.as_ref().ok_or(EngineError::Stopped)?;
        tx.send(Request { input, count, linger, reply }).map_err(|_| EngineError::Stopped)?;
        rx.recv().map_err(|_| EngineError::Stopped)?
    }
}

/// Runs a group of requests as one pass and gives each its share; should the shared pass
/// fail, each request runs alone, so one cannot fail another.
fn serve(model: &LoadedModel, mut group: Vec<Request>) {
    if group.len() == 1 {
        let req = group.pop().expect("one request");
        let _ = req.reply.send(run(model, req.input, req.count));
        return;
    }
    let total: usize = group.iter().map(|r| r.count).sum();
    let started = Instant::now();
    let shared = group
        .iter()
        .map(|r| to_batch(model, &r.input, r.count))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|parts| timed(model, &Tensor::cat(&parts, 0), started));
    match shared {
        Ok(Timed { output, elapsed, .. }) => {
            let mut alphas = output.alphas.into_iter();
            let mut embeddings = output.embeddings.into_iter();
            for req in group {
                let part = ForwardOutput {
                    alphas: alphas.by_ref().take(req.count).collect(),
                    alpha_size: output.alpha_size,
                    embeddings: embeddings.by_ref().take(req.count).collect(),
                };
                let share = elapsed.mul_f64(req.count as f64 / total as f64);
                let _ = req.reply.send(Ok(Timed { output: part, elapsed: share, batch: total }));
            }
        }
        Err(_) => {
            for req in group {
                let _ = req.reply.send(run(model, req.input, req.count));
            }
        }
    }
}

/// The request's images as a model input on the model's device: planes as they are, pixels
/// copied as bytes (pinned, without blocking, on a GPU) and normalised there.
fn to_batch(model: &LoadedModel, input: &BatchInput, count: usize) -> Result<Tensor, EngineError> {
    let spec = &model.manifest.input;
    let (n, h, w) = (count as i64, spec.height as i64, spec.width as i64);
    if input.len() as i64 != n * 3 * h * w {
        return Err(EngineError::InvalidRequest {
            reason: format!("{} values for {count} images of {w}x{h}", input.len()),
        });
    }
    let device = model.device();
    Ok(match input {
        BatchInput::Normalized(planes) => Tensor::from_slice(planes).view([n, 3, h, w]).to_device(device),
        BatchInput::Pixels(bytes) => {
            let host = Tensor::from_slice(bytes).view([n, h, w, 3]);
            let on_device = if device.is_cuda() {
                host.pin_memory(device).to_device_(device, tch::Kind::Uint8, true, false)
            } else {
                host
            };
            // x * scale / std - mean / std, per channel, as `preprocess::normalize_into` does.
            let mul: Vec<f32> = (0..3).map(|c| spec.scale / spec.std[c]).collect();
            let add: Vec<f32> = (0..3).map(|c| -spec.mean[c] / spec.std[c]).collect();
            let column = |v: &[f32]| Tensor::from_slice(v).view([1, 3, 1, 1]).to_device(device);
            on_device.permute([0, 3, 1, 2]).to_kind(tch::Kind::Float) * column(&mul) + column(&add)
        }
    })
}

fn run(model: &LoadedModel, input: BatchInput, count: usize) -> Result<Timed, EngineError> {
    let started = Instant::now();
    timed(model, &to_batch(model, &input, count)?, started)
}

fn timed(model: &LoadedModel, batch: &Tensor, started: Instant) -> Result<Timed, EngineError> {
    let output = model.forward(batch)?;
    Ok(Timed { batch: output.alphas.len(), output, elapsed: started.elapsed() })
}

impl Drop for InferenceThread {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}
