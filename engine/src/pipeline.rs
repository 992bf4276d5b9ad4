//! The engine pipeline for a stream of images, in three overlapping stages:
//!
//! ```text
//! bytes --[prepare: decode, resize, normalise; rayon]--> batch
//!       --[infer: one forward pass per batch; the inference thread]--> alpha + embedding
//!       --[finish: alpha back to full size, composite, encode; rayon]--> ItemResult
//! ```
//!
//! Each stage hands its batch to the next over a bounded channel, so while the device runs
//! batch k the CPU decodes batch k+1 and composites batch k-1. A bad image fails alone with
//! a reason; the others in its batch go on.

use std::time::Instant;

use crossbeam_channel::bounded;
use fleet_imaging::composite::{composite, Background, CompositeOptions, Composited};
use fleet_imaging::decode::{decode, DecodeLimits};
use fleet_imaging::encode::{encode, encode_matte_png, OutputFormat};
use fleet_imaging::matte::{refine, uncertainty, Morphology};
use fleet_imaging::resize::{resize_gray, resize_rgb};
use image::{GrayImage, RgbImage};
use rayon::prelude::*;

use super::preprocess::{normalize_into, resized_pixels};
use super::record::{ImageInfo, ItemFailure, ItemRecord, OutputInfo, StageTimings};
use super::runtime::{BatchInput, InferenceThread, Timed};
use super::EngineError;

/// How the engine treats each image of a job.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Images per forward pass.
    pub batch_size: usize,
    /// Checked before any pixel is decoded.
    pub limits: DecodeLimits,
    /// Background mode and foreground preservation thresholds.
    pub composite: CompositeOptions,
    /// Optional light morphology on the full-size alpha.
    pub morphology: Morphology,
    /// Encoding of the result image.
    pub format: OutputFormat,
    /// When set, each output keeps thumbnails of this height for a contact sheet.
    pub preview_height: Option<u32>,
    /// When set, an input whose long side is over this is scaled down first, so the result,
    /// matte and everything after decode work at the smaller size.
    pub max_side: Option<u32>,
    /// When set, each image's background is generated (several results per image).
    pub generate: Option<crate::generate::GenerateJob>,
    /// How long a forward pass may wait for other tasks' images on the same device to fill
    /// its batch (zero: join only what is already queued).
    pub batch_linger: std::time::Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            batch_size: 8,
            limits: DecodeLimits::default(),
            composite: CompositeOptions::default(),
            morphology: Morphology::None,
            format: OutputFormat::Png,
            preview_height: None,
            max_side: None,
            generate: None,
            batch_linger: std::time::Duration::ZERO,
        }
    }
}

impl EngineOptions {
    /// Refuses combinations that cannot produce an output, before any image is touched.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=256).contains(&self.batch_size) {
            return Err(format!("batch size must be within 1..=256, got {}", self.batch_size));
        }
        let transparent = matches!(self.composite.background, Background::Transparent);
        if transparent && matches!(self.format, OutputFormat::Jpeg { .. }) {
            return Err("a transparent background needs png or webp output: jpeg cannot carry alpha".into());
        }
        if let OutputFormat::Jpeg { quality } = self.format {
            if !(1..=100).contains(&quality) {
                return Err(format!("jpeg quality must be within 1..=100, got {quality}"));
            }
        }
        Ok(())
    }
}

/// One image to process.
#[derive(Debug, Clone)]
pub struct InputItem {
    /// Caller's identifier (an S3 key, a file name).
    pub id: String,
    /// Encoded image bytes.
    pub bytes: Vec<u8>,
}

/// Small copies of the input, matte and result, for contact sheets.
#[derive(Debug, Clone)]
pub struct Preview {
    /// The input.
    pub before: RgbImage,
    /// The alpha matte.
    pub alpha: GrayImage,
    /// The result.
    pub after: Composited,
}

/// Everything the engine produces for one image.
#[derive(Debug, Clone)]
pub struct ItemOutput {
    /// Sizes, timings, model, uncertainty.
    pub record: ItemRecord,
    /// The encoded result image.
    pub image: Vec<u8>,
    /// The alpha matte as an 8-bit grayscale PNG.
    pub matte_png: Vec<u8>,
    /// L2-normalised embedding.
    pub embedding: Vec<f32>,
    /// Thumbnails, when asked for.
    pub preview: Option<Preview>,
    /// Results after the first, when several backgrounds were generated.
    pub variants: Vec<Variant>,
}

/// One more generated result of an image.
#[derive(Debug, Clone)]
pub struct Variant {
    /// The encoded result.
    pub image: Vec<u8>,
    /// Its embedding.
    pub embedding: Vec<f32>,
    /// Its seed.
    pub seed: u64,
}

/// The outcome for one image.
pub type ItemResult = Result<ItemOutput, ItemFailure>;

/// A decoded, normalised image waiting for its forward pass.
struct Prepared {
    id: String,
    rgb: RgbImage,
    input: ImageInfo,
    timings: StageTimings,
}

/// One batch moving through the stages, in input order.
/// One image's model input, as [`Engine::prepare`] makes it.
enum Prepped {
    Planes(Vec<f32>),
    Pixels(Vec<u8>),
}

struct Batch {
    slots: Vec<Result<Prepared, ItemFailure>>,
    input: Option<BatchInput>,
    inferred: Option<Timed>,
}

/// The engine: a model on its inference thread, plus the CPU stages around it.
pub struct Engine {
    inference: InferenceThread,
}

impl Engine {
    /// Wraps a started inference thread.
    pub fn new(inference: InferenceThread) -> Self {
        Engine { inference }
    }

    /// The inference thread (model manifest, device).
    pub fn inference(&self) -> &InferenceThread {
        &self.inference
    }

    /// Processes one batch and returns a result per input, in order.
    pub fn process_batch(&self, items: Vec<InputItem>, opts: &EngineOptions) -> Result<Vec<ItemResult>, EngineError> {
        let mut out = Vec::with_capacity(items.len());
        self.process_stream(items.into_iter(), opts, |r| out.push(r))?;
        Ok(out)
    }

    /// Processes a stream of images with the three stages overlapped; `sink` gets every
    /// result in input order. Fails only when the model or device fails.
    pub fn process_stream<I>(
        &self,
        items: I,
        opts: &EngineOptions,
        mut sink: impl FnMut(ItemResult),
    ) -> Result<(), EngineError>
    where
        I: Iterator<Item = InputItem> + Send,
    {
        let batch_size = opts.batch_size.max(1);
        let (prepared_tx, prepared_rx) = bounded::<Batch>(1);
        let (inferred_tx, inferred_rx) = bounded::<Batch>(1);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let mut items = items.peekable();
                while items.peek().is_some() {
                    let chunk: Vec<InputItem> = items.by_ref().take(batch_size).collect();
                    if prepared_tx.send(self.prepare(chunk, opts)).is_err() {
                        break;
                    }
                }
            });
            let infer = scope.spawn(move || -> Result<(), EngineError> {
                for mut batch in prepared_rx {
                    let count = batch.slots.iter().filter(|s| s.is_ok()).count();
                    if count > 0 {
                        let input = batch.input.take().expect("a prepared batch holds its input");
                        batch.inferred = Some(self.inference.infer_within(input, count, opts.batch_linger)?);
                    }
                    if inferred_tx.send(batch).is_err() {
                        break;
                    }
                }
                Ok(())
            });
            for batch in inferred_rx {
                for result in self.finish(batch, opts) {
                    sink(result);
                }
            }
            infer.join().unwrap_or(Err(EngineError::Stopped))
        })
    }

    /// Decodes and prepares a chunk: normalised planes for a CPU model; for a GPU model the
    /// resized 8-bit pixels, normalised on the device (a quarter of the bytes to copy).
    fn prepare(&self, chunk: Vec<InputItem>, opts: &EngineOptions) -> Batch {
        let spec = &self.inference.manifest().input;
        let plane = 3 * (spec.width * spec.height) as usize;
        let on_device = self.inference.device().is_cuda();
        let decoded: Vec<Result<(Prepared, Prepped), ItemFailure>> = chunk
            .into_par_iter()
            .map(|item| {
                let started = Instant::now();
                let mut decoded =
                    decode(&item.bytes, &opts.limits).map_err(|e| ItemFailure::from_image(&item.id, &e))?;
                if let Some(max) = opts.max_side {
                    decoded.rgb = shrink_to(decoded.rgb, max);
                }
                let mut timings = StageTimings { decode_ms: ms(started), ..Default::default() };
                let started = Instant::now();
                let prepped = if on_device {
                    Prepped::Pixels(resized_pixels(&decoded.rgb, spec))
                } else {
                    let mut planes = vec![0.0f32; plane];
                    normalize_into(&decoded.rgb, spec, &mut planes);
                    Prepped::Planes(planes)
                };
                timings.preprocess_ms = ms(started);
                let input = ImageInfo {
                    width: decoded.rgb.width(),
                    height: decoded.rgb.height(),
                    format: decoded.format,
                    bytes: item.bytes.len(),
                };
                Ok((Prepared { id: item.id, rgb: decoded.rgb, input, timings }, prepped))
            })
            .collect();
        let (mut planes, mut pixels) = (Vec::new(), Vec::new());
        let slots = decoded
            .into_iter()
            .map(|slot| {
                slot.map(|(prepared, prepped)| {
                    match prepped {
                        Prepped::Planes(p) => planes.extend_from_slice(&p),
                        Prepped::Pixels(p) => pixels.extend_from_slice(&p),
                    }
                    prepared
                })
            })
            .collect();
        let input = Some(if on_device { BatchInput::Pixels(pixels) } else { BatchInput::Normalized(planes) });
        Batch { slots, input, inferred: None }
    }

    fn finish(&self, batch: Batch, opts: &EngineOptions) -> Vec<ItemResult> {
        let Some(Timed { output, elapsed, batch: pass }) = batch.inferred else {
            return batch.slots.into_iter().map(|s| Err(s.err().expect("no image reached the model"))).collect();
        };
        let count = output.alphas.len();
        let forward_ms = elapsed.as_secs_f64() * 1e3 / count as f64;
        let (ah, aw) = output.alpha_size;
        let mut model_outputs = output.alphas.into_iter().zip(output.embeddings);
        let work: Vec<_> = batch
            .slots
            .into_iter()
            .map(|slot| slot.map(|p| (p, model_outputs.next().expect("one output per prepared image"))))
            .collect();
        let manifest = self.inference.manifest();
        let model = manifest.model_ref().to_string();
        let device = format!("{:?}", self.inference.device()).to_lowercase();
        work.into_par_iter()
            .map(|slot| {
                let (mut p, (alpha, embedding)) = slot?;
                p.timings.forward_ms = forward_ms;
                let small = GrayImage::from_raw(aw, ah, alpha).expect("alpha buffer matches its size");
                let ctx =
                    FinishContext { model: &model, device: &device, batch: pass, opts, inference: &self.inference };
                finish_one(p, &small, embedding, &ctx)
            })
            .collect()
    }
}

struct FinishContext<'a> {
    model: &'a str,
    device: &'a str,
    batch: usize,
    opts: &'a EngineOptions,
    inference: &'a InferenceThread,
}

fn finish_one(p: Prepared, small_alpha: &GrayImage, embedding: Vec<f32>, ctx: &FinishContext) -> ItemResult {
    let Prepared { id, rgb, input, mut timings } = p;
    let started = Instant::now();
    let mut alpha = resize_gray(small_alpha, rgb.width(), rgb.height());
    refine(&mut alpha, ctx.opts.morphology);
    let uncertainty = uncertainty(&alpha);
    timings.postprocess_ms = ms(started);
    if let Some(job) = &ctx.opts.generate {
        return finish_generated(Generated { id, rgb, input, timings, alpha, uncertainty }, job, ctx);
    }
    let started = Instant::now();
    let composited = composite(&rgb, &alpha, &ctx.opts.composite);
    timings.composite_ms = ms(started);
    let started = Instant::now();
    // Options are validated up front; what is left is a size the format cannot hold
    // (JPEG stops at 65535 px a side), which fails this image alone.
    let image = encode(&composited, ctx.opts.format).map_err(|e| ItemFailure::from_image(&id, &e))?;
    let matte_png = encode_matte_png(&alpha);
    timings.encode_ms = ms(started);
    let preview = ctx.opts.preview_height.map(|h| thumbnails(&rgb, &alpha, &composited, h));
    let record = ItemRecord {
        id,
        output: OutputInfo::of(&composited, ctx.opts.format, image.len()),
        input,
        matte_bytes: matte_png.len(),
        model: ctx.model.to_string(),
        device: ctx.device.to_string(),
        batch: ctx.batch,
        timings_ms: timings,
        uncertainty,
        embedding_dim: embedding.len(),
        generated: None,
    };
    Ok(ItemOutput { record, image, matte_png, embedding, preview, variants: Vec::new() })
}

/// An image whose matte is ready and whose backgrounds are to be generated.
struct Generated {
    id: String,
    rgb: RgbImage,
    input: ImageInfo,
    timings: StageTimings,
    alpha: GrayImage,
    uncertainty: f32,
}

/// Generates the image's backgrounds, composites the product over each (its own pixels
/// kept), encodes them and embeds each result with the matting model.
fn finish_generated(g: Generated, job: &crate::generate::GenerateJob, ctx: &FinishContext) -> ItemResult {
    let Generated { id, rgb, input, mut timings, alpha, uncertainty } = g;
    let fail = |code: &str, reason: String| ItemFailure { id: id.clone(), code: code.into(), reason };
    let started = Instant::now();
    let backgrounds = job
        .generator
        .backgrounds(&rgb, &alpha, &job.options)
        .map_err(|e| fail("generation_failed", format!("generating the background: {e}")))?;
    timings.generate_ms = ms(started);
    let started = Instant::now();
    let composites: Vec<Composited> = backgrounds
        .into_iter()
        .map(|bg| {
            let opts = CompositeOptions {
                background: Background::Image(std::sync::Arc::new(bg)),
                ..ctx.opts.composite.clone()
            };
            composite(&rgb, &alpha, &opts)
        })
        .collect();
    timings.composite_ms = ms(started);
    let started = Instant::now();
    let spec = &ctx.inference.manifest().input;
    let plane = 3 * (spec.width * spec.height) as usize;
    let mut planes = vec![0.0f32; plane * composites.len()];
    for (c, out) in composites.iter().zip(planes.chunks_mut(plane)) {
        if let Composited::Rgb(img) = c {
            normalize_into(img, spec, out);
        }
    }
    let embedded = ctx
        .inference
        .infer(planes, composites.len())
        .map_err(|e| fail("embedding_failed", format!("embedding the generated results: {e}")))?;
    timings.generate_ms += ms(started);
    let started = Instant::now();
    let mut encoded = Vec::with_capacity(composites.len());
    for c in &composites {
        encoded.push(encode(c, ctx.opts.format).map_err(|e| ItemFailure::from_image(&id, &e))?);
    }
    let matte_png = encode_matte_png(&alpha);
    timings.encode_ms = ms(started);
    let seeds: Vec<u64> = (0..composites.len() as u64).map(|k| job.options.seed.wrapping_add(k)).collect();
    let mut embeddings = embedded.output.embeddings.into_iter();
    let mut images = encoded.into_iter();
    let first_image = images.next().ok_or_else(|| fail("generation_failed", "no result was generated".into()))?;
    let first_embedding = embeddings.next().unwrap_or_default();
    let variants = images
        .zip(embeddings)
        .zip(seeds.iter().skip(1))
        .map(|((image, embedding), &seed)| Variant { image, embedding, seed })
        .collect();
    let preview = ctx.opts.preview_height.map(|h| thumbnails(&rgb, &alpha, &composites[0], h));
    let (w, h) = (rgb.width(), rgb.height());
    let o = &job.options;
    let record = ItemRecord {
        id,
        output: OutputInfo::of(&composites[0], ctx.opts.format, first_image.len()),
        input,
        matte_bytes: matte_png.len(),
        model: ctx.model.to_string(),
        device: ctx.device.to_string(),
        batch: ctx.batch,
        timings_ms: timings,
        uncertainty,
        embedding_dim: first_embedding.len(),
        generated: Some(super::record::GeneratedRecord {
            generator: job.generator.manifest.model_ref().to_string(),
            seeds,
            steps: o.steps,
            guidance: o.guidance,
            sampler: match o.sampler {
                crate::diffusion::SamplerKind::Ddim { .. } => "ddim".into(),
                crate::diffusion::SamplerKind::Euler => "euler".into(),
            },
            sample_size: job.generator.sample_size(w, h),
        }),
    };
    Ok(ItemOutput { record, image: first_image, matte_png, embedding: first_embedding, preview, variants })
}

fn thumbnails(rgb: &RgbImage, alpha: &GrayImage, after: &Composited, height: u32) -> Preview {
    let width = ((rgb.width() as u64 * height as u64) / rgb.height().max(1) as u64).max(1) as u32;
    let after = match after {
        Composited::Rgb(img) => Composited::Rgb(image::imageops::thumbnail(img, width, height)),
        Composited::Rgba(img) => Composited::Rgba(image::imageops::thumbnail(img, width, height)),
    };
    Preview {
        before: image::imageops::thumbnail(rgb, width, height),
        alpha: image::imageops::thumbnail(alpha, width, height),
        after,
    }
}

/// Scales `rgb` down so its long side is at most `max`, keeping the aspect ratio.
fn shrink_to(rgb: RgbImage, max: u32) -> RgbImage {
    let (w, h) = rgb.dimensions();
    let long = w.max(h);
    if long <= max {
        return rgb;
    }
    let scale = max as f64 / long as f64;
    let (nw, nh) = (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
    resize_rgb(&rgb, nw, nh)
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}
