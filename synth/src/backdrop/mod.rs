//! Studio backdrops for background generation: six procedural surface classes, a small
//! prompt vocabulary that names them, and product photos composited onto them. This is
//! training data beside the job flow
//! `client -> RabbitMQ -> scheduler -> worker (S3 in, libtorch, S3 out) -> events -> client`:
//! the worker's small conditional inpainting model learns to paint a backdrop from a
//! prompt, and its small classifier learns to name one.
//!
//! Every pattern is laid out in units of the image's short side, never in pixels, so a
//! 32x32 render shows the same planks, veins, checks and shelf boards as a 256x256 one.
//! Renders whose short side is under `SUPERSAMPLE_SIDE` are supersampled and box-filtered
//! so that fine texture averages out instead of aliasing. Like the rest of the crate, a
//! render is a function of its arguments only and uses no libm transcendental functions.
//!
//! The parts: the prompt vocabulary (`prompts.rs`), the six surface classes (`classes.rs`),
//! the supersampling painter they share (`surface.rs`) and product photos composited onto
//! backdrops (`scene.rs`).

mod classes;
mod prompts;
mod scene;
mod surface;

use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use self::classes::{Concrete, Fabric, Gradient, Marble, Shelf, Wood};
use self::surface::paint;
use crate::detmath::V2;
use crate::rng::mix_seed;

pub use self::prompts::{class_of_prompt, prompt, PROMPT_WORDS};
pub use self::scene::{render_scene, training_photos, BackdropScene, TrainingPhoto};

/// Stream id separating backdrop draws from the scene generator's.
const LOOK_STREAM: u64 = 0xbac4_d20b;

/// A backdrop class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backdrop {
    /// Brown or tan planks with grain streaks along one axis.
    Wood,
    /// Near-white stone with thin grey veins.
    Marble,
    /// Mid-grey mottled surface with small speckles.
    Concrete,
    /// Saturated woven cloth with a check pattern.
    Fabric,
    /// Smooth two-colour gradient, pastel or grey.
    Gradient,
    /// Light wall with one or two shelf boards.
    Shelf,
}

impl Backdrop {
    /// Every class, in `index` order.
    pub const ALL: [Backdrop; 6] =
        [Backdrop::Wood, Backdrop::Marble, Backdrop::Concrete, Backdrop::Fabric, Backdrop::Gradient, Backdrop::Shelf];

    /// Lower-case class noun, as it appears in prompts.
    pub fn name(self) -> &'static str {
        match self {
            Backdrop::Wood => "wood",
            Backdrop::Marble => "marble",
            Backdrop::Concrete => "concrete",
            Backdrop::Fabric => "fabric",
            Backdrop::Gradient => "gradient",
            Backdrop::Shelf => "shelf",
        }
    }

    /// Position in `ALL` (the classifier's label).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The class with this exact noun.
    pub fn from_name(name: &str) -> Option<Backdrop> {
        Backdrop::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Renders a `kind` backdrop at `width` x `height`; the same arguments give the same bytes.
pub fn render_backdrop(kind: Backdrop, width: u32, height: u32, seed: u64) -> RgbImage {
    let r = &mut ChaCha8Rng::seed_from_u64(mix_seed(seed, kind.index() as u64, LOOK_STREAM));
    let short = width.min(height).max(1) as f32;
    let extent = V2::new(width as f32 / short, height as f32 / short);
    match kind {
        Backdrop::Wood => paint(&Wood::draw(r), width, height),
        Backdrop::Marble => paint(&Marble::draw(r), width, height),
        Backdrop::Concrete => paint(&Concrete::draw(r), width, height),
        Backdrop::Fabric => paint(&Fabric::draw(r), width, height),
        Backdrop::Gradient => paint(&Gradient::draw(r, extent), width, height),
        Backdrop::Shelf => paint(&Shelf::draw(r, extent), width, height),
    }
}

#[cfg(test)]
mod tests;
