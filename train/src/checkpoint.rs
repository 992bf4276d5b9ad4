//! A fine-tune's checkpoint: the trainable module, the optimiser's state and the loop's own
//! state in one folder, written every `checkpoint_every` steps and read back to resume; and
//! the provenance files written next to a trained model.

use std::path::Path;

use fleet_protocol::manifest::ModelManifest;
use tch::{nn, Device};
use tokio::sync::mpsc;

use fleet_protocol::fine_tune::Hyper;
use fleet_protocol::message::StepRecord;
use serde::{Deserialize, Serialize};

use crate::progress::Event;

/// The state saved with a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Steps done (the next step to run).
    pub step: u32,
    /// Losses and learning rates so far, for the curve and the report.
    pub history: Vec<StepRecord>,
    /// Validation after phase 1, if phase 1 ended.
    pub phase1_validation: Option<(f64, f64)>,
    /// Phase 2's samples and the filter's report, once phase 1 ended.
    pub phase2: Option<Phase2>,
    /// The job's seed (the data order and augmentations follow from it and the step).
    pub seed: u64,
}

/// The samples phase 2 trains on, chosen by mask quality after phase 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase2 {
    /// Sample indices kept.
    pub kept: Vec<usize>,
    /// What was dropped and why (line, image, score, reason).
    pub dropped: Vec<serde_json::Value>,
    /// Samples scored.
    pub scored: usize,
}

pub const CHECKPOINT_FILES: [&str; 3] = ["module.pt", "optimizer.pt", "state.json"];

/// The trainable module (the base's `trainable_file`, else its `file`; the checkpoint's when
/// `resumed`) and its AdamW state, with the variable store that holds them.
pub fn load_trainable(
    manifest: &ModelManifest,
    base_dir: &Path,
    work: &Path,
    resumed: bool,
    device: Device,
) -> Result<(nn::VarStore, tch::TrainableCModule, crate::adamw::AdamW), String> {
    let module_path = if resumed {
        work.join("resume/module.pt")
    } else {
        base_dir.join(manifest.trainable_file.as_deref().unwrap_or(&manifest.file))
    };
    fleet_engine::code::vet(&module_path).map_err(|e| format!("{}: refused: {e}", module_path.display()))?;
    let vs = nn::VarStore::new(device);
    let module = tch::TrainableCModule::load(&module_path, vs.root())
        .map_err(|e| format!("loading {}: {e}", module_path.display()))?;
    let mut optimizer = crate::adamw::AdamW::new(vs.trainable_variables());
    if resumed {
        optimizer.load(work.join("resume/optimizer.pt")).map_err(|e| format!("optimiser state: {e}"))?;
    }
    Ok((vs, module, optimizer))
}

/// Writes a checkpoint locally under `work`, has the task upload it under the lease, and
/// waits for it.
pub fn save_checkpoint(
    work: &Path,
    module: &tch::TrainableCModule,
    optimizer: &crate::adamw::AdamW,
    state: &CheckpointState,
    events: &mpsc::Sender<Event>,
) -> Result<(), String> {
    let dir = work.join(format!("checkpoint-{}", state.step));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    module.save(dir.join("module.pt")).map_err(|e| e.to_string())?;
    optimizer.save(dir.join("optimizer.pt")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("state.json"), serde_json::to_vec(state).expect("state serialises"))
        .map_err(|e| e.to_string())?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    events
        .blocking_send(Event::Checkpoint { dir: dir.clone(), step: state.step, done: tx })
        .map_err(|_| "the task stopped listening")?;
    rx.recv().map_err(|_| "the task stopped listening")??;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Writes what a trained model keeps beside it: `training-embeddings.jsonl` (one JSON line
/// per training sample) and `loss-curve.png` (loss and learning rate per step, phases marked).
pub fn write_provenance(dir: &Path, lines: &str, history: &[StepRecord], h: &Hyper) -> Result<(), String> {
    std::fs::write(dir.join("training-embeddings.jsonl"), lines).map_err(|e| e.to_string())?;
    let loss: Vec<(u32, f64)> = history.iter().map(|r| (r.step, r.loss)).collect();
    let lrs: Vec<(u32, f64)> = history.iter().map(|r| (r.step, r.lr)).collect();
    let boundary = (h.steps_phase2 > 0).then_some(h.steps_phase1);
    std::fs::write(dir.join("loss-curve.png"), crate::curve::curve_png(&loss, &lrs, boundary))
        .map_err(|e| e.to_string())
}
