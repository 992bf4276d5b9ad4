//! Fine-tuning, usable alone: the training loops of a `fine_tune` job (see
//! `fleet_protocol::fine_tune`) and their building blocks. No network and no object store:
//! the worker feeds a loop its samples and uploads what it emits ([`progress::Event`]). In
//! the job's flow
//!
//! ```text
//! data -> buckets -> quality filter -> phase 1 (all) -> phase 2 (best)
//!      with warm-up schedules -> AdamW -> checkpoints
//! ```
//!
//! - [`matting`], [`generator`]: the two loops (matting models; diffusion inpainting
//!   generators), sharing [`data`] order, [`progress`] and [`checkpoint`]s;
//! - `fleet_engine::buckets`: each sample is resized into the aspect-ratio bucket nearest its
//!   own, all at the job's pixel budget (inference generates at the same sizes);
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
pub mod checkpoint;
pub mod corrupt;
pub mod curve;
pub mod data;
pub mod generator;
pub mod matting;
pub mod progress;
pub mod quality;
pub mod schedule;
