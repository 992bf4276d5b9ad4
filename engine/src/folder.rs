//! Running the engine over a folder of images: the command a person uses to look at
//! quality. Writes per image the result, its alpha matte, its embedding (`.npy`) and a
//! record line, plus `failures.jsonl` and a before / alpha / after contact sheet.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use fleet_imaging::sheet::contact_sheet;
use serde::Serialize;

use crate::record::format_name;
use crate::{Engine, EngineError, EngineOptions, InputItem, ItemResult, Preview};

/// Height of each contact-sheet row, in pixels.
pub const SHEET_ROW_HEIGHT: u32 = 160;
/// At most this many images go on the contact sheet (the worst cutouts first).
pub const SHEET_MAX_ROWS: usize = 24;

/// What a folder run did.
#[derive(Debug, Serialize)]
pub struct FolderSummary {
    /// Images that produced outputs.
    pub succeeded: usize,
    /// Images that failed, with reasons in `failures.jsonl`.
    pub failed: usize,
    /// Wall time of the whole run.
    pub seconds: f64,
    /// Throughput over the whole run.
    pub images_per_second: f64,
    /// The contact sheet, when at least one image succeeded.
    pub contact_sheet: Option<PathBuf>,
}

/// Files in `dir` (not recursing), sorted by name, skipping hidden files.
pub fn list_inputs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files)
}

/// Processes every file in `input` and writes the outputs into `output`.
///
/// Fails with [`EngineError::Io`] when the input folder cannot be listed or an output cannot
/// be written, and with the engine's error when the engine as a whole fails; images that
/// fail alone are counted and listed in `failures.jsonl`.
pub fn run_folder(
    engine: &Engine,
    input: &Path,
    output: &Path,
    opts: &EngineOptions,
) -> Result<FolderSummary, EngineError> {
    std::fs::create_dir_all(output).map_err(|e| EngineError::io(output, e))?;
    let files = list_inputs(input).map_err(|e| EngineError::io(input, e))?;
    let started = std::time::Instant::now();
    let items = files.iter().map(|path| InputItem {
        id: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        // An unreadable file becomes an empty input, which the engine fails with a reason.
        bytes: std::fs::read(path).unwrap_or_default(),
    });
    let (records_path, failures_path) = (output.join("records.jsonl"), output.join("failures.jsonl"));
    let create = |path: &Path| File::create(path).map(BufWriter::new).map_err(|e| EngineError::io(path, e));
    let mut records = create(&records_path)?;
    let mut failures = create(&failures_path)?;
    let mut previews: Vec<(f32, Preview)> = Vec::new();
    let (mut succeeded, mut failed) = (0, 0);
    let mut io_error = None;
    engine.process_stream(items, opts, |result: ItemResult| match result {
        Ok(out) => {
            succeeded += 1;
            if let Err(e) = write_outputs(output, &out, opts) {
                io_error.get_or_insert(e);
            }
            let _ = serde_json::to_writer(&mut records, &out.record).map(|_| records.write_all(b"\n"));
            if let Some(p) = out.preview {
                keep_worst(&mut previews, (out.record.uncertainty, p));
            }
        }
        Err(failure) => {
            failed += 1;
            tracing::warn!(id = %failure.id, code = %failure.code, reason = %failure.reason, "image failed");
            let _ = serde_json::to_writer(&mut failures, &failure).map(|_| failures.write_all(b"\n"));
        }
    })?;
    if let Some(e) = io_error {
        return Err(e);
    }
    records.flush().map_err(|e| EngineError::io(&records_path, e))?;
    failures.flush().map_err(|e| EngineError::io(&failures_path, e))?;
    let contact_sheet = write_sheet(output, previews)?;
    let seconds = started.elapsed().as_secs_f64();
    let images_per_second = succeeded as f64 / seconds.max(1e-9);
    Ok(FolderSummary { succeeded, failed, seconds, images_per_second, contact_sheet })
}

fn write_outputs(dir: &Path, out: &crate::ItemOutput, opts: &EngineOptions) -> Result<(), EngineError> {
    let stem = Path::new(&out.record.id).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    write_output(&dir.join(format!("{stem}.{}", format_name(opts.format))), &out.image)?;
    write_output(&dir.join(format!("{stem}.matte.png")), &out.matte_png)?;
    write_output(&dir.join(format!("{stem}.embedding.npy")), &npy_f32(&out.embedding))
}

/// [`write_atomic`], failing with the path written.
fn write_output(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    write_atomic(path, bytes).map_err(|e| EngineError::io(path, e))
}

/// Writes through a temporary sibling and a rename, so a reader never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.partial",
        path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// A 1-D float32 vector in NumPy's `.npy` format (version 1.0, little-endian).
pub fn npy_f32(values: &[f32]) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}", values.len());
    // Magic (6) + version (2) + length (2) + header + '\n' must be a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + values.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    out
}

/// Keeps the `SHEET_MAX_ROWS` most uncertain previews, worst first, so memory stays bounded
/// however large the folder is.
fn keep_worst(previews: &mut Vec<(f32, Preview)>, entry: (f32, Preview)) {
    let at = previews.partition_point(|p| p.0 >= entry.0);
    if at < SHEET_MAX_ROWS {
        previews.insert(at, entry);
        previews.truncate(SHEET_MAX_ROWS);
    }
}

fn write_sheet(dir: &Path, previews: Vec<(f32, Preview)>) -> Result<Option<PathBuf>, EngineError> {
    if previews.is_empty() {
        return Ok(None);
    }
    let rows: Vec<_> = previews.iter().map(|(_, p)| (&p.before, &p.alpha, &p.after)).collect();
    let sheet = contact_sheet(&rows, SHEET_ROW_HEIGHT);
    let path = dir.join("contact-sheet.png");
    let mut bytes = Vec::new();
    sheet
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| EngineError::io(&path, format!("encoding the png: {e}")))?;
    write_output(&path, &bytes)?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_data_follows() {
        let bytes = npy_f32(&[1.0, -2.5, 3.25]);
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.contains("'shape': (3,)") && header.ends_with('\n'));
        let data: Vec<f32> =
            bytes[10 + header_len..].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(data, vec![1.0, -2.5, 3.25]);
    }

    #[test]
    fn an_output_that_cannot_be_written_names_its_path_and_may_pass_later() {
        let path = std::env::temp_dir().join("fleet-engine-no-such-folder").join("x").join("a.png");
        let err = write_output(&path, b"png").unwrap_err();
        assert!(matches!(&err, EngineError::Io { path: p, .. } if p == &path.display().to_string()), "{err}");
        assert!(err.is_retryable() && err.to_string().contains("a.png"), "{err}");
    }
}
