//! Cheap looks at the raw bytes before any decoder runs: which format the magic bytes say,
//! the dimensions a header declares, and whether a JPEG's marker structure is complete.

use super::InputFormat;
use crate::error::ImageError;

/// The format named by the magic bytes, or a short name of what was seen instead.
pub(crate) fn sniff(bytes: &[u8]) -> Result<InputFormat, ImageError> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Ok(InputFormat::Jpeg);
    }
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok(InputFormat::Png);
    }
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Ok(InputFormat::Webp);
    }
    Err(ImageError::UnsupportedFormat { seen: describe(bytes).to_string() })
}

/// A short human name for bytes that are not an accepted format.
fn describe(bytes: &[u8]) -> &'static str {
    const MAGIC: &[(&[u8], &str)] = &[
        (b"GIF87a", "gif"),
        (b"GIF89a", "gif"),
        (b"BM", "bmp"),
        (b"II*\0", "tiff"),
        (b"MM\0*", "tiff"),
        (b"%PDF", "pdf"),
        (b"8BPS", "psd"),
        (b"\0\0\x01\0", "ico"),
        (b"\xff\x0a", "jpeg xl"),
        (b"\0\0\0\x0cJXL ", "jpeg xl"),
        (b"\0\0\0\x0cjP  ", "jpeg 2000"),
        (b"PK\x03\x04", "zip archive"),
        (b"\xff\xd8", "damaged jpeg header"),
        (b"\x89PNG", "damaged png header"),
    ];
    if let Some((_, name)) = MAGIC.iter().find(|(magic, _)| bytes.starts_with(magic)) {
        return name;
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return match &bytes[8..12] {
            b"avif" | b"avis" => "avif",
            b"heic" | b"heix" | b"mif1" | b"msf1" | b"hevc" => "heic",
            _ => "iso media (video?)",
        };
    }
    if bytes.starts_with(b"RIFF") {
        return "riff container that is not webp";
    }
    let head = &bytes[..bytes.len().min(512)];
    let is_text =
        std::str::from_utf8(head).is_ok_and(|text| text.chars().all(|c| !c.is_control() || c.is_ascii_whitespace()));
    match (is_text, head.trim_ascii_start().first()) {
        (true, Some(b'<')) => "xml/html/svg text",
        (true, Some(b'{')) => "json text",
        (true, _) => "text",
        (false, _) => "unknown binary data",
    }
}

/// Width and height from a PNG's IHDR chunk, which the format places first.
pub(crate) fn png_dimensions(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    if bytes.len() < 24 || &bytes[12..16] != b"IHDR" {
        return Err(ImageError::Corrupt("png has no IHDR header".into()));
    }
    Ok((be32(&bytes[16..20]), be32(&bytes[20..24])))
}

/// Walks a JPEG's markers from SOI to EOI without decoding pixels; returns the frame's
/// dimensions. Fails on a file that ends before the end-of-image marker, because the JPEG
/// decoder would otherwise silently fill the missing part of a truncated upload with grey.
pub(crate) fn jpeg_structure(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    let truncated = || ImageError::Corrupt("jpeg ends before its end-of-image marker".into());
    let mut dims = None;
    let mut pos = 2;
    loop {
        // Skip stray bytes and fill bytes up to the next marker code.
        while pos < bytes.len() && bytes[pos] != 0xFF {
            pos += 1;
        }
        while pos < bytes.len() && bytes[pos] == 0xFF {
            pos += 1;
        }
        let Some(&marker) = bytes.get(pos) else {
            return Err(truncated());
        };
        pos += 1;
        match marker {
            0xD9 => return dims.ok_or_else(|| ImageError::Corrupt("jpeg has no frame header".into())),
            0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        if pos + 2 > bytes.len() {
            return Err(truncated());
        }
        let len = usize::from(u16::from_be_bytes([bytes[pos], bytes[pos + 1]]));
        if len < 2 {
            return Err(ImageError::Corrupt(format!("jpeg segment at byte {pos} is malformed")));
        }
        if pos + len > bytes.len() {
            return Err(truncated());
        }
        let is_frame = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_frame && len >= 7 {
            let height = u16::from_be_bytes([bytes[pos + 3], bytes[pos + 4]]);
            let width = u16::from_be_bytes([bytes[pos + 5], bytes[pos + 6]]);
            dims = Some((u32::from(width), u32::from(height)));
        }
        pos += len;
        if marker == 0xDA {
            pos = skip_entropy_data(bytes, pos);
        }
    }
}

/// Index of the first marker after entropy-coded data starting at `pos` (stuffed 0xFF00 bytes
/// and restart markers belong to the data), or the length when the data runs to the end.
fn skip_entropy_data(bytes: &[u8], mut pos: usize) -> usize {
    while let Some(offset) = bytes[pos..].iter().position(|&b| b == 0xFF) {
        let at = pos + offset;
        match bytes.get(at + 1) {
            Some(0x00 | 0xD0..=0xD7 | 0xFF) => pos = at + 1,
            Some(_) => return at,
            None => return bytes.len(),
        }
    }
    bytes.len()
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
