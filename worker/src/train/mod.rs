//! The pure building blocks of a `fine_tune` job (see `fleet_common::finetune`): no network,
//! no object store, each testable on a CPU. In the job's flow
//!
//! ```text
//! data -> buckets -> quality filter -> phase 1 (all) -> phase 2 (best)
//!      with warm-up schedules -> AdamW -> checkpoints
//! ```
//!
//! - [`buckets`]: each sample is resized into the aspect-ratio bucket nearest its own, all
//!   buckets at the job's pixel budget with sides the U-Net can halve four times;
//! - [`corrupt`]: which samples get seeded noise, and the noise, so no contributor's photo
//!   is memorised;
//! - [`quality`]: each mask scored against the base model's prediction; phase 1 trains on
//!   every accepted sample, phase 2 only on those at or above the quality threshold, and the
//!   others are reported with the reason;
//! - [`schedule`]: the learning rate of each step, a linear warm-up at the start of each
//!   phase then constant, cosine or cyclic;
//! - [`adamw`]: the optimiser, with its state saved next to each checkpoint of the weights
//!   so an interrupted job resumes exactly where it stopped;
//! - [`curve`]: the PNG of the loss and learning-rate curves attached to the job's report.

pub mod adamw;
pub mod buckets;
pub mod corrupt;
pub mod curve;
pub mod quality;
pub mod schedule;
