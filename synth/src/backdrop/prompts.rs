//! The prompt vocabulary of the backdrop classes: the words a prompt may use, the
//! templates that build one for a class, and the class a prompt names.

use super::Backdrop;
use crate::rng::mix_seed;

/// Stream id for the prompt template choice.
const PROMPT_STREAM: u64 = 0x960e_7a11;

/// Every word a prompt can contain: the class nouns, then the template words.
pub const PROMPT_WORDS: &[&str] = &[
    "wood",
    "marble",
    "concrete",
    "fabric",
    "gradient",
    "shelf",
    "a",
    "studio",
    "background",
    "backdrop",
    "surface",
    "product",
    "on",
];

/// Prompt templates as (words before the noun, words after it).
const TEMPLATES: [(&str, &str); 7] = [
    ("", ""),
    ("", " background"),
    ("studio ", " surface"),
    ("a ", " backdrop"),
    ("studio ", " background"),
    ("product on ", ""),
    ("product on a ", " surface"),
];

/// A prompt for `kind`, one of a few templates chosen by `seed`, e.g. "studio wood surface".
pub fn prompt(kind: Backdrop, seed: u64) -> String {
    let t = mix_seed(seed, kind.index() as u64, PROMPT_STREAM) % TEMPLATES.len() as u64;
    let (before, after) = TEMPLATES[t as usize];
    format!("{before}{}{after}", kind.name())
}

/// The class a prompt names: `None` unless exactly one class noun appears (ignoring case
/// and punctuation around words).
pub fn class_of_prompt(prompt: &str) -> Option<Backdrop> {
    let mut found = None;
    for word in prompt.split_whitespace() {
        let word = word.trim_matches(|c: char| c.is_ascii_punctuation()).to_ascii_lowercase();
        if let Some(kind) = Backdrop::from_name(&word) {
            if found.is_some_and(|f| f != kind) {
                return None;
            }
            found = Some(kind);
        }
    }
    found
}
