//! The inference thread: one OS thread per device owns the model and runs every forward
//! pass, so async code and the CPU stages never block on libtorch and the model is never
//! shared across threads.

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
    /// Wall time of the forward pass, host-to-device copy and read-back included.
    pub elapsed: Duration,
}

struct Request {
    input: Vec<f32>,
    count: usize,
    reply: Sender<Result<Timed, EngineError>>,
}

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
        let (tx, rx) = bounded::<Request>(1);
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
                for req in rx {
                    let _ = req.reply.send(run(&model, req.input, req.count));
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
    pub fn infer(&self, input: Vec<f32>, count: usize) -> Result<Timed, EngineError> {
        let (reply, rx) = bounded(1);
        let tx = self.tx.as_ref().ok_or(EngineError::Stopped)?;
        tx.send(Request { input, count, reply }).map_err(|_| EngineError::Stopped)?;
        rx.recv().map_err(|_| EngineError::Stopped)?
    }
}

fn run(model: &LoadedModel, input: Vec<f32>, count: usize) -> Result<Timed, EngineError> {
    let spec = &model.manifest.input;
    let started = Instant::now();
    let batch = Tensor::from_slice(&input).view([count as i64, 3, spec.height as i64, spec.width as i64]);
    let output = model.forward(&batch)?;
    Ok(Timed { output, elapsed: started.elapsed() })
}

impl Drop for InferenceThread {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}
