//! What a training loop tells the task that runs it: progress every few steps, checkpoints to
//! upload, and how it ended.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use fleet_protocol::message::{StepRecord, TrainingProgress};
use tokio::sync::mpsc;

use crate::checkpoint::CheckpointState;

/// What the training thread tells the task.
pub enum Event {
    /// Steps since the last event.
    Progress(TrainingProgress),
    /// A checkpoint is written locally in the folder; upload it and answer.
    Checkpoint { dir: PathBuf, step: u32, done: std::sync::mpsc::SyncSender<Result<(), String>> },
}

/// How the training thread ended.
pub enum Trained {
    /// Every step ran.
    Done(TrainOutcome),
    /// A checkpoint at this step was saved and training stopped to give the device back.
    Yielded(u32),
}

/// What training produced: a model folder ready to register, and its report.
pub struct TrainOutcome {
    /// The model folder, ready to register.
    pub dir: PathBuf,
    /// What happened, for the job's report.
    pub report: serde_json::Value,
}

/// The bookkeeping of a training loop: every step's record, progress reports (every 500 ms,
/// at the end, and whenever the loop asks) and the history a checkpoint keeps.
pub struct Steps<'a> {
    /// Every step so far; a resumed run starts with its checkpoint's.
    pub history: Vec<StepRecord>,
    pub pending: Vec<StepRecord>,
    pub last_report: Instant,
    pub resumed_from: Option<u32>,
    pub started: Instant,
    pub start: u32,
    pub total: u32,
    pub events: &'a mpsc::Sender<Event>,
}

impl<'a> Steps<'a> {
    pub fn new(
        resume: Option<&CheckpointState>,
        total: u32,
        started: Instant,
        events: &'a mpsc::Sender<Event>,
    ) -> Self {
        Steps {
            history: resume.map(|s| s.history.clone()).unwrap_or_default(),
            pending: Vec::new(),
            last_report: Instant::now(),
            resumed_from: resume.map(|s| s.step),
            started,
            start: resume.map_or(0, |s| s.step),
            total,
            events,
        }
    }

    /// Reports every step not reported yet, as at `step` of `phase`, with `validation`.
    pub fn report(&mut self, step: u32, phase: u8, validation: Option<(u8, f64, f64)>) -> Result<(), String> {
        self.last_report = Instant::now();
        let batch = std::mem::take(&mut self.pending);
        let p = progress(step, self.total, phase, batch, &mut self.resumed_from, self.started, self.start, validation);
        self.events.blocking_send(Event::Progress(p)).map_err(|_| "the task stopped listening".to_string())
    }

    /// Records a step's loss; a loss that is not finite stops training with the advice.
    pub fn record(&mut self, step: u32, phase: u8, loss: f64, lr: f64) -> Result<(), String> {
        if !loss.is_finite() {
            return Err(format!("training diverged at step {step} (loss {loss}); lower the learning rate"));
        }
        let record = StepRecord { step, phase, loss, lr };
        self.history.push(record);
        self.pending.push(record);
        Ok(())
    }

    /// Reports once 500 ms have passed since the last report, or when `done` is the last step.
    pub fn report_due(&mut self, done: u32, phase: u8) -> Result<(), String> {
        if self.last_report.elapsed().as_millis() >= 500 || done == self.total {
            self.report(done, phase, None)
        } else {
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn progress(
    step: u32,
    total: u32,
    phase: u8,
    steps: Vec<StepRecord>,
    resumed_from: &mut Option<u32>,
    started: Instant,
    start: u32,
    validation: Option<(u8, f64, f64)>,
) -> TrainingProgress {
    let done = step.saturating_sub(start).max(1) as f64;
    let rate = done / started.elapsed().as_secs_f64().max(1e-6);
    TrainingProgress {
        step,
        total_steps: total,
        phase,
        steps,
        steps_per_s: rate,
        eta_s: total.saturating_sub(step) as f64 / rate,
        // Said once, in the first report after a resume.
        resumed_from: resumed_from.take(),
        validation,
    }
}

/// A training loop that runs on a thread of its own and reports through [`Event`]s: the
/// matting loop and the generator loop, hosted the same way by whoever runs them.
pub trait Trainer: Send + 'static {
    /// Set to stop the loop at its next step (its host gave up on it).
    fn stop_flag(&self) -> Arc<AtomicBool>;
    /// Runs the loop to its end, to a yield at a checkpoint, or to an error.
    fn run(self, events: &mpsc::Sender<Event>) -> Result<Trained, String>;
}
