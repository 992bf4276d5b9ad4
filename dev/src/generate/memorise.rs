//! EXPERIMENTS.md's memorisation check, after Somepalli et al. 2023 ("Diffusion Art or
//! Digital Forgery?"): the reference generator is trained twice on a small set of photos, with
//! the same data, steps and seed, once plain and once with `corruption_ratio` (the generator
//! fine-tune's Ambient Diffusion masks); each samples backgrounds for held-out product photos
//! with training prompts, and every generated background is matched to its nearest training
//! background. Copying shows as top-1 similarities above what training photos score against
//! each other (the train-vs-train baseline).
//!
//! The descriptor: Somepalli's SSCD features cannot be downloaded here, so the match is made
//! on pixels, in the spirit of Carlini et al.'s ℓ2 extraction test: both backgrounds at
//! [`SIDE`] x [`SIDE`], the pixels that are background in both, centred on their mean (one
//! value over the three channels, so colour counts) and L2-normalised; the cosine of the two,
//! the better of the training photo and its mirror image (training flips photos).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use fleet_engine::generate::masks::{background_mask, dilate_px};
use fleet_engine::generate::{GenerateOptions, Generator};
use fleet_engine::model::LoadedModel;
use fleet_imaging::resize::{resize_gray, resize_rgb};
use fleet_protocol::fine_tune::{GeneratorTraining, Hyper, MaskSource};
use fleet_protocol::{DeviceSpec, ModelRef};
use fleet_synth::backdrop::{class_of_prompt, Backdrop};
use fleet_train::generator::{GenSample, GeneratorJob};
use fleet_train::progress::{TrainOutcome, Trained};
use image::{GrayImage, RgbImage};
use serde::Serialize;

use super::classifier::BackdropClassifier;
use super::evaluate::{evaluate, held_out, matte, Evaluation};
use crate::error::{DevError, IoAt, Result};
use crate::reference::generator::{self as reference, BASE_NAME, VERSION};

/// Side of the square backgrounds are compared at: the generator samples about 32 x 32, so
/// half of that keeps its structure and forgives a pixel of misalignment.
pub const SIDE: u32 = 16;

/// Margin around the product left out of the comparison, percent of the long side (the
/// worker's default dilation when it generates).
pub const DILATE_PCT: f32 = 2.0;

/// Least share of the compared square that must be background in both images.
const MIN_OVERLAP: f64 = 0.25;

/// How the experiment is run.
#[derive(Debug, Clone, Serialize)]
pub struct MemoriseConfig {
    /// Photos per backdrop class given to the training (small, so copying is possible).
    pub per_class: usize,
    /// Seed of the photos and the training.
    pub seed: u64,
    /// Steps of phase 1 and phase 2.
    pub steps: (u32, u32),
    /// Batch size.
    pub batch: u32,
    /// `corruption_ratio` of the corrupted arm.
    pub corruption: f64,
    /// Backgrounds sampled per arm.
    pub samples: usize,
    /// Held-out photos of the quality check.
    pub photos: usize,
    /// Folder to write, per arm, the most similar generated backgrounds beside their nearest
    /// training photo.
    #[serde(skip)]
    pub save: Option<std::path::PathBuf>,
}

/// A background reduced to the descriptor's square.
#[derive(Clone)]
pub struct Descriptor {
    /// `SIDE * SIDE * 3` values in `[0, 1]`, row-major.
    pixels: Vec<f32>,
    /// `SIDE * SIDE`: whether the pixel is background.
    region: Vec<bool>,
}

impl Descriptor {
    /// `rgb` where `background` (a matte-sized mask, 1 = background) says it is background.
    pub fn of(rgb: &RgbImage, background: &[f32]) -> Self {
        let mask =
            GrayImage::from_raw(rgb.width(), rgb.height(), background.iter().map(|&b| (b * 255.0) as u8).collect())
                .expect("one mask value per pixel");
        let small = resize_rgb(rgb, SIDE, SIDE);
        Descriptor {
            pixels: small.as_raw().iter().map(|&v| f32::from(v) / 255.0).collect(),
            // Background throughout the resized pixel, not at its edge.
            region: resize_gray(&mask, SIDE, SIDE).as_raw().iter().map(|&m| m >= 250).collect(),
        }
    }

    /// The same background mirrored left to right.
    pub fn mirrored(&self) -> Self {
        let side = SIDE as usize;
        let at = |i: usize| (i / side) * side + side - 1 - i % side;
        Descriptor {
            pixels: (0..self.pixels.len()).map(|k| self.pixels[at(k / 3) * 3 + k % 3]).collect(),
            region: (0..self.region.len()).map(|i| self.region[at(i)]).collect(),
        }
    }
}

/// Cosine of the two centred backgrounds over the pixels background in both; `None` when
/// they share less than [`MIN_OVERLAP`] of the square.
pub fn similarity(a: &Descriptor, b: &Descriptor) -> Option<f64> {
    let both: Vec<usize> = (0..a.region.len()).filter(|&i| a.region[i] && b.region[i]).collect();
    if (both.len() as f64) < MIN_OVERLAP * a.region.len() as f64 {
        return None;
    }
    let values = |d: &Descriptor| -> Vec<f64> {
        let v: Vec<f64> = both.iter().flat_map(|&i| (0..3).map(move |c| f64::from(d.pixels[i * 3 + c]))).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        v.into_iter().map(|x| x - mean).collect()
    };
    let (x, y) = (values(a), values(b));
    let dot: f64 = x.iter().zip(&y).map(|(p, q)| p * q).sum();
    let norm = (x.iter().map(|p| p * p).sum::<f64>() * y.iter().map(|q| q * q).sum::<f64>()).sqrt();
    Some(if norm > 1e-12 { dot / norm } else { 0.0 })
}

/// The similarity of `query` to a training photo, the better of the photo and its mirror
/// image (-1 when neither overlaps enough).
pub fn similarity_to(query: &Descriptor, (photo, mirror): &(Descriptor, Descriptor)) -> f64 {
    [similarity(query, photo), similarity(query, mirror)].into_iter().flatten().fold(-1.0, f64::max)
}

/// The best similarity of `query` to any of `train` but `skip`, with the index it was found at.
pub fn nearest(query: &Descriptor, train: &[(Descriptor, Descriptor)], skip: Option<usize>) -> (f64, usize) {
    let mut best = (-1.0, 0);
    for (j, t) in train.iter().enumerate() {
        let s = similarity_to(query, t);
        if Some(j) != skip && s > best.0 {
            best = (s, j);
        }
    }
    best
}

/// The `q`-th percentile of `values` (linear between ranks, as numpy's default).
pub fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = q / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

/// Top-1 similarities of a set of images to the training photos.
#[derive(Debug, Clone, Serialize)]
pub struct Similarities {
    /// Images matched.
    pub count: usize,
    /// Mean top-1 similarity.
    pub mean: f64,
    /// 95th percentile of the top-1 similarity.
    pub p95: f64,
    /// Highest top-1 similarity.
    pub max: f64,
    /// Share whose top-1 similarity is above the copy threshold.
    pub above_threshold: f64,
}

impl Similarities {
    fn of(top1: &[f64], threshold: f64) -> Self {
        let n = top1.len().max(1) as f64;
        Similarities {
            count: top1.len(),
            mean: top1.iter().sum::<f64>() / n,
            p95: percentile(top1, 95.0),
            max: top1.iter().copied().fold(f64::NAN, f64::max),
            above_threshold: top1.iter().filter(|&&s| s > threshold).count() as f64 / n,
        }
    }
}

/// How closely a group of training photos is reproduced: for each photo, the highest
/// similarity any generated background reaches to it.
#[derive(Debug, Clone, Serialize)]
pub struct Reproduction {
    /// Photos in the group.
    pub photos: usize,
    /// Mean of each photo's best similarity.
    pub mean_best: f64,
    /// Share of the photos some generated background is above the copy threshold to.
    pub copied: f64,
}

impl Reproduction {
    fn of(best: &[f64], threshold: f64) -> Self {
        let n = best.len().max(1) as f64;
        Reproduction {
            photos: best.len(),
            mean_best: best.iter().sum::<f64>() / n,
            copied: best.iter().filter(|&&s| s > threshold).count() as f64 / n,
        }
    }
}

/// One trained generator's figures.
#[derive(Debug, Clone, Serialize)]
pub struct MemoriseArm {
    /// Its `corruption_ratio`.
    pub corruption: f64,
    /// Training photos it saw corrupted.
    pub corrupted: u64,
    /// Generated backgrounds against the training photos.
    pub copying: Similarities,
    /// Share of generated backgrounds whose nearest training photo has the prompt's backdrop.
    pub nearest_same_class: f64,
    /// The photos the corrupted arm corrupts (in both arms: the plain one is their control).
    pub corrupted_photos: Reproduction,
    /// The photos no arm corrupts.
    pub clean_photos: Reproduction,
    /// Held-out denoising error after training (whole image, background).
    pub validation: serde_json::Value,
    /// The held-out quality check (quality mode).
    pub evaluation: Evaluation,
    /// Training seconds.
    pub train_seconds: f64,
}

/// The experiment's figures.
#[derive(Debug, Clone, Serialize)]
pub struct MemoriseReport {
    /// How it was run.
    pub config: MemoriseConfig,
    /// Photos trained on (after the leak filter and the validation split).
    pub training_photos: usize,
    /// The copy threshold: the train-vs-train baseline's 95th percentile.
    pub threshold: f64,
    /// Each training photo against its nearest other training photo.
    pub baseline: Similarities,
    /// The held-out photos' own backgrounds against the training photos: what fresh photos
    /// of the same distribution score, copying nothing.
    pub held_out: Similarities,
    /// The plain and the corrupted generator.
    pub arms: Vec<MemoriseArm>,
}

/// A training photo: its descriptor (and mirror image) and its backdrop.
struct TrainPhoto {
    /// Whether the corrupted arm corrupts it.
    corrupted: bool,
    rgb: RgbImage,
    descriptors: (Descriptor, Descriptor),
    class: Option<Backdrop>,
    prompt: String,
}

/// Runs the experiment (both arms in this process, on the CPU unless a GPU is there).
pub fn memorise_experiment(python: &Path, models_root: &Path, cfg: &MemoriseConfig) -> Result<MemoriseReport> {
    let matting_dir = crate::reference::train::ensure_reference_model(models_root)?;
    let base = reference::ensure_base(python, models_root)?;
    let device = fleet_engine::resolve_device(DeviceSpec::Auto)?;
    let matting = LoadedModel::load(&matting_dir, device)?;
    let classifier = BackdropClassifier::standard();
    let photos = reference::photos(cfg.per_class, cfg.seed);
    let (mut arms, mut train_set) = (Vec::new(), None);
    for corruption in [0.0, cfg.corruption] {
        let work = tempfile::tempdir().at(&std::env::temp_dir())?;
        let started = std::time::Instant::now();
        let outcome = train_arm(&base, &matting_dir, cfg, corruption, photos.clone(), work.path())?;
        let train_seconds = started.elapsed().as_secs_f64();
        // Both arms split and filter the same photos the same way (same seed, same matting).
        let train = match train_set.take() {
            Some(t) => t,
            None => training_photos(&photos, &outcome.report, &matting, cfg)?,
        };
        let generator = Generator::load(&outcome.dir, device)?;
        let opts = quality_mode(&generator);
        let (top1, same_class, best, matches) = copying(&generator, &matting, &train, cfg.samples, &opts)?;
        if let Some(dir) = &cfg.save {
            save_sheet(&dir.join(format!("closest-corruption-{corruption}.png")), matches, &train)?;
        }
        let evaluation = evaluate(&generator, &matting, &classifier, cfg.photos, &opts, None)?;
        tracing::info!(corruption, ?evaluation, "memorisation arm done");
        arms.push((corruption, outcome.report, top1, same_class, best, evaluation, train_seconds));
        train_set = Some(train);
    }
    let train = train_set.expect("two arms ran");
    let descriptors: Vec<(Descriptor, Descriptor)> = train.iter().map(|t| t.descriptors.clone()).collect();
    let baseline: Vec<f64> = (0..train.len()).map(|i| nearest(&descriptors[i].0, &descriptors, Some(i)).0).collect();
    let threshold = percentile(&baseline, 95.0);
    let mut held = Vec::with_capacity(cfg.samples);
    for i in 0..cfg.samples {
        let (rgb, _, _) = held_out(i);
        held.push(nearest(&Descriptor::of(&rgb, &region(&matting, &rgb)?), &descriptors, None).0);
    }
    Ok(MemoriseReport {
        config: cfg.clone(),
        training_photos: train.len(),
        threshold,
        baseline: Similarities::of(&baseline, threshold),
        held_out: Similarities::of(&held, threshold),
        arms: arms
            .into_iter()
            .map(|(corruption, report, top1, same_class, best, evaluation, train_seconds)| MemoriseArm {
                corruption,
                corrupted: report["corruption"]["corrupted"].as_u64().unwrap_or(0),
                copying: Similarities::of(&top1, threshold),
                nearest_same_class: same_class,
                corrupted_photos: Reproduction::of(&group(&best, &train, true), threshold),
                clean_photos: Reproduction::of(&group(&best, &train, false), threshold),
                // Phase 2's when it ran, phase 1's otherwise.
                validation: match &report["phases"][1]["validation"] {
                    serde_json::Value::Null => report["phases"][0]["validation"].clone(),
                    v => v.clone(),
                },
                evaluation,
                train_seconds,
            })
            .collect(),
    })
}

/// The entries of `best` (one per training photo) of the photos the corrupted arm corrupts, or
/// of the others.
fn group(best: &[f64], train: &[TrainPhoto], corrupted: bool) -> Vec<f64> {
    best.iter().zip(train).filter(|(_, t)| t.corrupted == corrupted).map(|(b, _)| *b).collect()
}

/// Trains one arm: the reference generator's recipe ([`reference::train`]) with `corruption`.
fn train_arm(
    base: &Path,
    matting: &Path,
    cfg: &MemoriseConfig,
    corruption: f64,
    samples: Vec<GenSample>,
    work: &Path,
) -> Result<TrainOutcome> {
    let hyper = Hyper { corruption_ratio: corruption, ..reference::reference_hyper(cfg.steps, cfg.batch, cfg.seed) };
    let train = crate::reference::train::NAME;
    let job = GeneratorJob {
        samples,
        hyper,
        settings: GeneratorTraining {
            mask_model: format!("{train}@{}", crate::reference::train::VERSION),
            masks: MaskSource::Background,
            dilate_pct: 4.0,
            leak_threshold: 0.35,
        },
        base_dir: base.to_path_buf(),
        mask_dir: matting.to_path_buf(),
        device: DeviceSpec::Auto,
        work: work.to_path_buf(),
        resume: None,
        output: ModelRef { name: format!("memorise-{corruption}"), version: VERSION.into() },
        parent: ModelRef { name: BASE_NAME.into(), version: VERSION.into() },
        stop: Arc::new(AtomicBool::new(false)),
        yield_now: Arc::new(AtomicBool::new(false)),
    };
    match reference::run_local(job)? {
        Trained::Done(outcome) => Ok(outcome),
        Trained::Yielded(step) => Err(DevError::Yielded { step }),
    }
}

/// The worker's quality mode (Euler, 30 steps, the generator's guidance), as the masks
/// experiment samples.
fn quality_mode(generator: &Generator) -> GenerateOptions {
    GenerateOptions {
        prompt: None,
        negative_prompt: None,
        reference: None,
        seed: 1,
        steps: 30,
        guidance: generator.spec.guidance.unwrap_or(7.5),
        results: 1,
        sampler: fleet_engine::diffusion::SamplerKind::Euler,
        dilate_pct: DILATE_PCT,
    }
}

/// The background of `rgb` as the matting model sees it (1 = background), at its size.
fn region(matting: &LoadedModel, rgb: &RgbImage) -> Result<Vec<f32>> {
    let alpha = matte(matting, rgb)?;
    Ok(background_mask(&alpha, dilate_px(DILATE_PCT, rgb.width(), rgb.height())))
}

/// The photos the training kept: not leak-filtered, not held out for validation.
fn training_photos(
    photos: &[GenSample],
    report: &serde_json::Value,
    matting: &LoadedModel,
    cfg: &MemoriseConfig,
) -> Result<Vec<TrainPhoto>> {
    let lines =
        |v: &serde_json::Value| -> Vec<u64> { v.as_array().into_iter().flatten().filter_map(|x| x.as_u64()).collect() };
    let validation = lines(&report["validation_lines"]);
    let leaked: Vec<u64> = report["filter"]["leak"]["dropped"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["line"].as_u64())
        .collect();
    let mut out = Vec::new();
    for (index, p) in photos.iter().enumerate() {
        if validation.contains(&(p.line as u64)) || leaked.contains(&(p.line as u64)) {
            continue;
        }
        let d = Descriptor::of(&p.rgb, &region(matting, &p.rgb)?);
        let prompt = p.sample.prompt.clone().unwrap_or_default();
        let mirror = d.mirrored();
        out.push(TrainPhoto {
            // The job's own choice: its samples are these photos, in this order.
            corrupted: fleet_train::corrupt::chosen(index, cfg.corruption, cfg.seed),
            rgb: p.rgb.clone(),
            descriptors: (d, mirror),
            class: class_of_prompt(&prompt),
            prompt,
        });
    }
    if out.len() < 2 {
        return Err(DevError::Training(format!("{} photos were trained on; the baseline needs 2", out.len())));
    }
    Ok(out)
}

/// Samples `n` backgrounds, held-out photo `i` with the prompt of a training photo of its own
/// backdrop (so the sizes match, as Somepalli samples with training captions), and returns
/// each one's top-1 similarity, the share whose nearest photo is of the prompt's backdrop,
/// each training photo's best similarity to any of them, and every background with its
/// similarity and nearest photo.
#[allow(clippy::type_complexity)]
fn copying(
    generator: &Generator,
    matting: &LoadedModel,
    train: &[TrainPhoto],
    n: usize,
    opts: &GenerateOptions,
) -> Result<(Vec<f64>, f64, Vec<f64>, Vec<(f64, usize, RgbImage)>)> {
    let descriptors: Vec<(Descriptor, Descriptor)> = train.iter().map(|t| t.descriptors.clone()).collect();
    let (mut top1, mut same, mut matches) = (Vec::with_capacity(n), 0usize, Vec::with_capacity(n));
    let mut best = vec![-1.0f64; train.len()];
    for i in 0..n {
        let (rgb, own, _) = held_out(i);
        let of_class: Vec<&TrainPhoto> = train.iter().filter(|t| t.class == Some(own)).collect();
        let prompt = match of_class.as_slice() {
            [] => train[i % train.len()].prompt.clone(),
            some => some[(i / Backdrop::ALL.len()) % some.len()].prompt.clone(),
        };
        let alpha = matte(matting, &rgb)?;
        let o = GenerateOptions {
            prompt: Some(prompt.clone()),
            seed: opts.seed.wrapping_add(i as u64 * 101),
            ..opts.clone()
        };
        let background = generator.backgrounds(&rgb, &alpha, &o)?.remove(0);
        let mask = background_mask(&alpha, dilate_px(DILATE_PCT, rgb.width(), rgb.height()));
        let d = Descriptor::of(&background, &mask);
        for (b, t) in best.iter_mut().zip(&descriptors) {
            *b = b.max(similarity_to(&d, t));
        }
        let (s, j) = nearest(&d, &descriptors, None);
        top1.push(s);
        same += usize::from(train[j].class.is_some() && train[j].class == class_of_prompt(&prompt));
        matches.push((s, j, background));
    }
    Ok((top1, same as f64 / n.max(1) as f64, best, matches))
}

/// The eight most similar generated backgrounds (left) beside their nearest training photo
/// (right), most similar first.
fn save_sheet(path: &Path, mut matches: Vec<(f64, usize, RgbImage)>, train: &[TrainPhoto]) -> Result<()> {
    const CELL: u32 = 64;
    matches.sort_by(|a, b| b.0.total_cmp(&a.0));
    matches.truncate(8);
    let mut sheet = RgbImage::from_pixel(2 * CELL + 4, CELL * matches.len().max(1) as u32, image::Rgb([255, 255, 255]));
    for (row, (_, j, generated)) in matches.iter().enumerate() {
        let y = i64::from(CELL) * row as i64;
        image::imageops::replace(&mut sheet, generated, 0, y);
        image::imageops::replace(&mut sheet, &train[*j].rgb, i64::from(CELL) + 4, y);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).at(dir)?;
    }
    sheet.save(path).map_err(|cause| DevError::Image { path: path.to_path_buf(), cause })
}

/// The experiment's table, as EXPERIMENTS.md shows it.
pub fn markdown(r: &MemoriseReport) -> String {
    let mut s = format!(
        "| images matched to the {} training photos | top-1 similarity, mean | p95 | max | above {:.3} (copy threshold) | \
         backdrop asked for recognised | held-out background MSE | train s |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        r.training_photos, r.threshold
    );
    let row = |name: String, x: &Similarities, rest: &str| {
        format!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.1} % | {rest} |\n",
            x.mean,
            x.p95,
            x.max,
            100.0 * x.above_threshold
        )
    };
    s.push_str(&row(
        format!("training photos vs the other training photos ({})", r.baseline.count),
        &r.baseline,
        "| |",
    ));
    s.push_str(&row(format!("held-out photos' own backgrounds ({})", r.held_out.count), &r.held_out, "| |"));
    for a in &r.arms {
        s.push_str(&row(
            format!(
                "generated, corruption {} ({} photos corrupted, {} samples)",
                a.corruption, a.corrupted, a.copying.count
            ),
            &a.copying,
            &format!(
                "{:.0} % | {:.4} | {:.0}",
                100.0 * a.evaluation.class_accuracy,
                a.validation["background_mse"].as_f64().unwrap_or(f64::NAN),
                a.train_seconds
            ),
        ));
    }
    let corrupted = r.arms.first().map_or(0, |a| a.corrupted_photos.photos);
    s.push_str(&format!(
        "\n| generator | best similarity to each of the {corrupted} photos the corrupted arm corrupts (mean) | \
         of them copied | to each of the {} photos never corrupted (mean) | of them copied |\n\
         | --- | ---: | ---: | ---: | ---: |\n",
        r.training_photos - corrupted
    ));
    for a in &r.arms {
        let (c, k) = (&a.corrupted_photos, &a.clean_photos);
        s.push_str(&format!(
            "| corruption {} | {:.3} | {:.0} % | {:.3} | {:.0} % |\n",
            a.corruption,
            c.mean_best,
            100.0 * c.copied,
            k.mean_best,
            100.0 * k.copied
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A textured `w` x `h` photo and an all-background mask.
    fn photo(seed: u32) -> (RgbImage, Vec<f32>) {
        let img = RgbImage::from_fn(32, 32, |x, y| {
            let v = |k: u32| ((x * (3 + seed) + y * (5 + k) + seed * 7 + k * 11) % 17 * 15) as u8;
            image::Rgb([v(0), v(1), v(2)])
        });
        (img, vec![1.0; 32 * 32])
    }

    #[test]
    fn a_copy_scores_one_a_mirrored_copy_is_found_and_other_photos_score_less() {
        let (a, all) = photo(1);
        let d = Descriptor::of(&a, &all);
        assert!((similarity(&d, &d).unwrap() - 1.0).abs() < 1e-9);
        let flipped = image::imageops::flip_horizontal(&a);
        let train = vec![(Descriptor::of(&flipped, &all), Descriptor::of(&flipped, &all).mirrored())];
        assert!((nearest(&d, &train, None).0 - 1.0).abs() < 1e-9, "the mirror image of a training photo is a copy");
        let (b, _) = photo(2);
        assert!(similarity(&d, &Descriptor::of(&b, &all)).unwrap() < 0.9);
        assert_eq!(nearest(&d, &train, Some(0)).0, -1.0, "skipped: nothing to match");
    }

    #[test]
    fn only_the_pixels_background_in_both_count() {
        let (a, all) = photo(3);
        // The right half of `b` is another photo, and is product in `b`'s mask.
        let (other, _) = photo(4);
        let mut b = a.clone();
        image::imageops::replace(&mut b, &image::imageops::crop_imm(&other, 16, 0, 16, 32).to_image(), 16, 0);
        let left: Vec<f32> = (0..32 * 32).map(|i| if i % 32 < 16 { 1.0 } else { 0.0 }).collect();
        let s = similarity(&Descriptor::of(&a, &all), &Descriptor::of(&b, &left)).unwrap();
        assert!(s > 0.999, "the product's pixels are left out: {s}");
        let none: Vec<f32> = vec![0.0; 32 * 32];
        assert!(similarity(&Descriptor::of(&a, &all), &Descriptor::of(&b, &none)).is_none());
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let v: Vec<f64> = (0..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&[1.0, 2.0], 50.0), 1.5);
        assert!(percentile(&[], 50.0).is_nan());
        let s = Similarities::of(&[0.1, 0.5, 0.9, 0.95], 0.8);
        assert_eq!((s.count, s.above_threshold, s.max), (4, 0.5, 0.95));
    }
}
