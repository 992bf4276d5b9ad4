//! The engine benchmark: images/s and per-stage time for ~1 MP inputs at several batch
//! sizes, next to the bare forward pass of the same TorchScript model on the same batches
//! in the same run. Prints a Markdown table for BENCHMARKS.md.

use std::fmt::Write as _;
use std::time::Instant;

use fleet_imaging::composite::Composited;
use fleet_imaging::composite::{Background, CompositeOptions};
use fleet_imaging::encode::{encode, OutputFormat};
use fleet_synth::Scene;
use rayon::prelude::*;

use fleet_engine::{Engine, EngineOptions, InputItem, StageTimings};

use crate::error::{DevError, Result};

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Batch sizes to measure.
    pub batch_sizes: Vec<usize>,
    /// Images per measured run (at least one full batch of the largest size).
    pub images: usize,
    /// Input width and height (1155 x 866 is 1.0 MP).
    pub size: (u32, u32),
    /// Output format of the results.
    pub format: OutputFormat,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            batch_sizes: vec![1, 8, 32],
            images: 64,
            size: (1155, 866),
            format: OutputFormat::Jpeg { quality: 90 },
        }
    }
}

/// Per-image cost of the CPU stages alone on one core: the images go through as one batch
/// inside a one-thread pool, so every stage runs alone (the forward pass sits between the
/// prepare and finish stages and overlaps neither).
pub fn cpu_stages_one_core(engine: &Engine, inputs: &[InputItem], format: OutputFormat) -> Result<StageTimings> {
    let opts = EngineOptions {
        batch_size: inputs.len(),
        composite: CompositeOptions { background: Background::Color([242, 242, 242]), ..Default::default() },
        format,
        ..Default::default()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| DevError::Threads { what: "one-thread pool", cause: e.to_string() })?;
    let results = pool.install(|| engine.process_batch(inputs.to_vec(), &opts))?;
    let mut sum = StageTimings::default();
    for r in &results {
        let out = r.as_ref().map_err(|f| DevError::BenchImage(f.to_string()))?;
        add(&mut sum, &out.record.timings_ms);
    }
    Ok(scale(&sum, 1.0 / results.len() as f64))
}

/// Figures for one batch size.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// Images per forward pass.
    pub batch: usize,
    /// End-to-end throughput of the overlapped pipeline.
    pub images_per_second: f64,
    /// Mean per-image stage times.
    pub stages: StageTimings,
    /// Bare forward pass of the same model on the same batch size, per image.
    pub bare_forward_ms: f64,
}

/// Makes `count` distinct ~1 MP JPEG product photos.
pub fn make_inputs(count: usize, size: (u32, u32)) -> Vec<InputItem> {
    (0..count as u64)
        .into_par_iter()
        .map(|i| {
            let sample = Scene::generate(0xBE7C, i).render(size.0, size.1);
            let bytes = encode(&Composited::Rgb(sample.image), OutputFormat::Jpeg { quality: 90 })
                .expect("jpeg encodes an rgb image");
            InputItem { id: format!("bench-{i:04}.jpg"), bytes }
        })
        .collect()
}

/// Runs the benchmark on `engine`.
pub fn run(engine: &Engine, cfg: &BenchConfig) -> Result<Vec<BenchRow>> {
    let inputs = make_inputs(cfg.images, cfg.size);
    let mut rows = Vec::new();
    for &batch in &cfg.batch_sizes {
        let opts = EngineOptions {
            batch_size: batch,
            composite: CompositeOptions { background: Background::Color([242, 242, 242]), ..Default::default() },
            format: cfg.format,
            ..Default::default()
        };
        // One warm-up batch so lazy initialisation is not timed.
        engine.process_batch(inputs[..batch.min(inputs.len())].to_vec(), &opts)?;
        let started = Instant::now();
        let mut sum = StageTimings::default();
        let mut n = 0usize;
        engine.process_stream(inputs.clone().into_iter(), &opts, |r| {
            if let Ok(out) = r {
                add(&mut sum, &out.record.timings_ms);
                n += 1;
            }
        })?;
        let seconds = started.elapsed().as_secs_f64();
        if n != inputs.len() {
            return Err(DevError::BenchImages { failed: inputs.len() - n, total: inputs.len() });
        }
        rows.push(BenchRow {
            batch,
            images_per_second: n as f64 / seconds,
            stages: scale(&sum, 1.0 / n as f64),
            bare_forward_ms: bare_forward(engine, batch, 5)?,
        });
    }
    Ok(rows)
}

/// Mean milliseconds per image of the forward pass alone, on a ready-made batch.
fn bare_forward(engine: &Engine, batch: usize, repeats: usize) -> Result<f64> {
    let spec = &engine.inference().manifest().input;
    let len = 3 * (spec.width * spec.height) as usize * batch;
    let input: Vec<f32> = (0..len).map(|i| ((i * 7919) % 255) as f32 / 255.0).collect();
    engine.inference().infer(input.clone(), batch)?;
    let mut total = 0.0;
    for _ in 0..repeats {
        total += engine.inference().infer(input.clone(), batch)?.elapsed.as_secs_f64();
    }
    Ok(total * 1e3 / (repeats * batch) as f64)
}

fn add(sum: &mut StageTimings, t: &StageTimings) {
    sum.decode_ms += t.decode_ms;
    sum.preprocess_ms += t.preprocess_ms;
    sum.forward_ms += t.forward_ms;
    sum.postprocess_ms += t.postprocess_ms;
    sum.composite_ms += t.composite_ms;
    sum.encode_ms += t.encode_ms;
    sum.generate_ms += t.generate_ms;
}

fn scale(t: &StageTimings, k: f64) -> StageTimings {
    StageTimings {
        decode_ms: t.decode_ms * k,
        preprocess_ms: t.preprocess_ms * k,
        forward_ms: t.forward_ms * k,
        postprocess_ms: t.postprocess_ms * k,
        composite_ms: t.composite_ms * k,
        encode_ms: t.encode_ms * k,
        generate_ms: t.generate_ms * k,
    }
}

/// The rows as a Markdown table, then the one-core CPU stage costs.
pub fn markdown(rows: &[BenchRow], one_core: &StageTimings, cfg: &BenchConfig, device: &str, threads: usize) -> String {
    let mut s = String::new();
    let (w, h) = cfg.size;
    let _ = writeln!(
        s,
        "Inputs: {} JPEG images of {w}x{h} ({:.2} MP); device {device}; {threads} CPU threads.\n",
        cfg.images,
        (w * h) as f64 / 1e6
    );
    s.push_str("| batch | images/s | decode ms | preprocess ms | forward ms (in pipeline) | postprocess ms | composite ms | encode ms | CPU stages ms | bare forward ms |\n");
    s.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let t = &r.stages;
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.batch,
            r.images_per_second,
            t.decode_ms,
            t.preprocess_ms,
            t.forward_ms,
            t.postprocess_ms,
            t.composite_ms,
            t.encode_ms,
            t.cpu_ms(),
            r.bare_forward_ms
        );
    }
    let t = one_core;
    let _ = writeln!(
        s,
        "\nCPU stages alone on one core (16 images, one batch, one-thread pool): decode {:.1} ms, preprocess {:.1} ms, \
         postprocess {:.1} ms, composite {:.1} ms, encode {:.1} ms; total {:.1} ms per image per core.",
        t.decode_ms, t.preprocess_ms, t.postprocess_ms, t.composite_ms, t.encode_ms, t.cpu_ms()
    );
    s.push_str(
        "\nStage times in the table are per image and measured on the thread that ran the stage (wall time while \
                the other stages ran beside it); forward ms is the image's share of its batch's forward pass.\n",
    );
    s
}
