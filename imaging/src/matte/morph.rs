//! Separable grayscale erosion/dilation with a square structuring element using the
//! van Herk / Gil-Werman algorithm: three comparisons per pixel and pass, for any radius.
//! Pixels outside the image count as the neutral value, so borders neither grow nor shrink.

use rayon::prelude::*;

/// Erodes (`min = true`) or dilates a `width`x`height` image in place with a
/// `(2*radius+1)`-square window.
pub(super) fn filter(data: &mut [u8], width: usize, height: usize, radius: usize, min: bool) {
    if min {
        rows::<true>(data, width, radius);
        columns::<true>(data, width, height, radius);
    } else {
        rows::<false>(data, width, radius);
        columns::<false>(data, width, height, radius);
    }
}

#[inline(always)]
fn pick<const MIN: bool>(a: u8, b: u8) -> u8 {
    if MIN {
        a.min(b)
    } else {
        a.max(b)
    }
}

const fn neutral<const MIN: bool>() -> u8 {
    if MIN {
        u8::MAX
    } else {
        u8::MIN
    }
}

/// Horizontal pass, one row at a time, rows in parallel.
fn rows<const MIN: bool>(data: &mut [u8], width: usize, radius: usize) {
    let window = 2 * radius + 1;
    // Padded length rounded up to whole blocks so every block is complete.
    let padded = (width + 2 * radius).div_ceil(window) * window;
    data.par_chunks_mut(width).for_each_init(
        || (vec![0u8; padded], vec![0u8; padded], vec![0u8; padded]),
        |(line, prefix, suffix), row| {
            line.fill(neutral::<MIN>());
            line[radius..radius + width].copy_from_slice(row);
            for (block, (pre, suf)) in
                line.chunks_exact(window).zip(prefix.chunks_exact_mut(window).zip(suffix.chunks_exact_mut(window)))
            {
                let mut acc = neutral::<MIN>();
                for (p, &v) in pre.iter_mut().zip(block) {
                    acc = pick::<MIN>(acc, v);
                    *p = acc;
                }
                acc = neutral::<MIN>();
                for (s, &v) in suf.iter_mut().zip(block).rev() {
                    acc = pick::<MIN>(acc, v);
                    *s = acc;
                }
            }
            // Window [x, x+window) in padded coordinates spans at most two blocks.
            for (x, out) in row.iter_mut().enumerate() {
                *out = pick::<MIN>(suffix[x], prefix[x + window - 1]);
            }
        },
    );
}

/// Vertical pass: the same algorithm with whole rows as the elements, so every step is a
/// vectorisable element-wise min/max over a row.
fn columns<const MIN: bool>(data: &mut [u8], width: usize, height: usize, radius: usize) {
    let window = 2 * radius + 1;
    let padded = (height + 2 * radius).div_ceil(window) * window;
    let src_row = |i: usize| -> Option<&[u8]> {
        (i >= radius && i - radius < height).then(|| &data[(i - radius) * width..][..width])
    };
    let mut prefix = vec![neutral::<MIN>(); padded * width];
    let mut suffix = vec![neutral::<MIN>(); padded * width];
    for block in 0..padded / window {
        let rows = block * window..(block + 1) * window;
        for i in rows.clone() {
            let (done, rest) = prefix.split_at_mut(i * width);
            let dst = &mut rest[..width];
            combine::<MIN>(dst, (i > rows.start).then(|| &done[(i - 1) * width..]), src_row(i));
        }
        for i in rows.clone().rev() {
            let (head, rest) = suffix.split_at_mut((i + 1) * width);
            let dst = &mut head[i * width..];
            combine::<MIN>(dst, (i + 1 < rows.end).then(|| &rest[..width]), src_row(i));
        }
    }
    data.par_chunks_mut(width).enumerate().for_each(|(y, out)| {
        let suf = &suffix[y * width..][..width];
        let pre = &prefix[(y + window - 1) * width..][..width];
        for ((o, &s), &p) in out.iter_mut().zip(suf).zip(pre) {
            *o = pick::<MIN>(s, p);
        }
    });
}

/// `dst = pick(previous, row)` where a missing operand is the neutral value.
fn combine<const MIN: bool>(dst: &mut [u8], previous: Option<&[u8]>, row: Option<&[u8]>) {
    match (previous, row) {
        (Some(prev), Some(row)) => {
            for ((d, &p), &r) in dst.iter_mut().zip(prev).zip(row) {
                *d = pick::<MIN>(p, r);
            }
        }
        (Some(only), None) | (None, Some(only)) => dst.copy_from_slice(&only[..dst.len()]),
        (None, None) => dst.fill(neutral::<MIN>()),
    }
}

/// Square dilation of a boolean mask by `radius` pixels, as two running-count passes (rows, then columns).
pub fn dilate_mask(fg: &[bool], width: usize, height: usize, radius: usize) -> Vec<bool> {
    let pass = |src: &[bool], len: usize, lines: usize, at: &dyn Fn(usize, usize) -> usize| {
        let mut out = vec![false; src.len()];
        for line in 0..lines {
            // Count of set pixels in the window [pos - radius, pos + radius].
            let mut count = (0..radius.min(len)).filter(|&k| src[at(line, k)]).count();
            for pos in 0..len {
                if pos + radius < len && src[at(line, pos + radius)] {
                    count += 1;
                }
                if pos > radius && src[at(line, pos - radius - 1)] {
                    count -= 1;
                }
                out[at(line, pos)] = count > 0;
            }
        }
        out
    };
    let rows = pass(fg, width, height, &|y, x| y * width + x);
    pass(&rows, height, width, &|x, y| y * width + x)
}
