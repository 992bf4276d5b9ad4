//! Parsing the engine options people type on a command line or put in a job spec:
//! background modes (`transparent`, `color:#f2f2f2`, `image:path`, `blur[:pct]`), output
//! formats (`png`, `jpeg[:quality]`, `webp`) and morphology (`none`, `open:R`, `close:R`).

use std::path::Path;
use std::sync::Arc;

use fleet_imaging::composite::Background;
use fleet_imaging::decode::{decode, DecodeLimits};
use fleet_imaging::encode::OutputFormat;
use fleet_imaging::matte::Morphology;
use fleet_protocol::job::parse_hex_color;

/// Largest morphology radius accepted: "light" morphology, not a reshaping of the product.
pub const MAX_MORPHOLOGY_RADIUS: u32 = 8;

/// Parses a background mode; `image:PATH` reads and decodes the file under `limits`.
pub fn parse_background(spec: &str, limits: &DecodeLimits) -> Result<Background, String> {
    let (mode, arg) = spec.split_once(':').unwrap_or((spec, ""));
    match (mode, arg) {
        ("transparent", "") => Ok(Background::Transparent),
        ("color", hex) => parse_hex_color(hex).map(Background::Color),
        ("blur", "") => Ok(Background::Blur { sigma_pct: 2.0 }),
        ("blur", pct) => match pct.parse::<f32>() {
            Ok(p) if p > 0.0 && p <= 20.0 => Ok(Background::Blur { sigma_pct: p }),
            _ => Err(format!("blur strength must be a percentage in (0, 20], got {pct:?}")),
        },
        ("image", path) if !path.is_empty() => {
            let bytes = std::fs::read(Path::new(path)).map_err(|e| format!("background image {path}: {e}"))?;
            let decoded = decode(&bytes, limits).map_err(|e| format!("background image {path}: {e}"))?;
            Ok(Background::Image(Arc::new(decoded.rgb)))
        }
        _ => Err(format!("unknown background {spec:?}: expected transparent, color:#rrggbb, image:PATH or blur[:PCT]")),
    }
}

/// Parses an output format.
pub fn parse_format(spec: &str) -> Result<OutputFormat, String> {
    match spec.split_once(':').unwrap_or((spec, "")) {
        ("png", "") => Ok(OutputFormat::Png),
        ("webp", "") => Ok(OutputFormat::Webp),
        ("jpeg" | "jpg", "") => Ok(OutputFormat::Jpeg { quality: 90 }),
        ("jpeg" | "jpg", q) => match q.parse::<u8>() {
            Ok(q) if (1..=100).contains(&q) => Ok(OutputFormat::Jpeg { quality: q }),
            _ => Err(format!("jpeg quality must be within 1..=100, got {q:?}")),
        },
        _ => Err(format!("unknown output format {spec:?}: expected png, jpeg[:Q] or webp")),
    }
}

/// Parses a morphology setting.
pub fn parse_morphology(spec: &str) -> Result<Morphology, String> {
    let (op, radius) = spec.split_once(':').unwrap_or((spec, "1"));
    let radius = match radius.parse::<u32>() {
        Ok(r) if (1..=MAX_MORPHOLOGY_RADIUS).contains(&r) => r,
        _ => return Err(format!("morphology radius must be within 1..={MAX_MORPHOLOGY_RADIUS}, got {radius:?}")),
    };
    match op {
        "none" => Ok(Morphology::None),
        "open" => Ok(Morphology::Open { radius }),
        "close" => Ok(Morphology::Close { radius }),
        _ => Err(format!("unknown morphology {spec:?}: expected none, open:R or close:R")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backgrounds_and_refuses_garbage() {
        let limits = DecodeLimits::default();
        assert!(matches!(parse_background("transparent", &limits), Ok(Background::Transparent)));
        assert!(matches!(parse_background("color:#0a0B0c", &limits), Ok(Background::Color([10, 11, 12]))));
        assert!(matches!(parse_background("blur:5", &limits), Ok(Background::Blur { sigma_pct }) if sigma_pct == 5.0));
        for bad in
            ["", "colour:#fff", "color:#fff", "color:#gggggg", "blur:0", "blur:x", "image:", "image:/nonexistent.png"]
        {
            assert!(parse_background(bad, &limits).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn parses_formats_and_morphology() {
        assert_eq!(parse_format("jpeg:75"), Ok(OutputFormat::Jpeg { quality: 75 }));
        assert_eq!(parse_format("webp"), Ok(OutputFormat::Webp));
        assert!(parse_format("jpeg:0").is_err() && parse_format("gif").is_err());
        assert_eq!(parse_morphology("open:2"), Ok(Morphology::Open { radius: 2 }));
        assert_eq!(parse_morphology("close"), Ok(Morphology::Close { radius: 1 }));
        assert!(parse_morphology("open:99").is_err() && parse_morphology("dilate:1").is_err());
    }
}
