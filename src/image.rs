//! Small PNG renderings for reports: sample grids, a spectrum chart and heat maps.
//! Everything is drawn into an in-memory 8-bit buffer and handed to the `png` encoder, so the
//! functions work with any `Write` (a file, an HTTP body, a test `Vec`).

use std::io::Write;

/// Errors from rendering; argument errors are reported instead of panicking because sizes often
/// come from a loaded model or request.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image arguments: {0}")]
    InvalidArgument(String),
    #[error("PNG encoding failed: {0}")]
    Encode(#[from] png::EncodingError),
}

fn invalid(msg: impl Into<String>) -> ImageError {
    ImageError::InvalidArgument(msg.into())
}

/// Grey value of the gap between grid cells: distinct from both black and white images.
const GAP_GREY: u8 = 128;

/// Chart size and colours.
const CHART_W: usize = 800;
const CHART_H: usize = 300;
const CHART_MARGIN: usize = 10;
const WHITE: [u8; 3] = [255, 255, 255];
const BAR: [u8; 3] = [170, 200, 235];
const LINE: [u8; 3] = [20, 60, 150];
const AXIS: [u8; 3] = [120, 120, 120];

/// Encodes a finished pixel buffer; `channels` is 1 (grey) or 3 (RGB).
fn encode<W: Write>(w: W, pixels: &[u8], width: usize, height: usize, channels: usize) -> Result<(), ImageError> {
    let (pw, ph) = match (u32::try_from(width), u32::try_from(height)) {
        (Ok(pw), Ok(ph)) if pw > 0 && ph > 0 => (pw, ph),
        _ => return Err(invalid(format!("image size {width}×{height} is not encodable"))),
    };
    debug_assert_eq!(pixels.len(), width * height * channels);
    let mut enc = png::Encoder::new(w, pw, ph);
    enc.set_color(if channels == 1 { png::ColorType::Grayscale } else { png::ColorType::Rgb });
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(())
}

/// Checked `a * b * c`, as a size error instead of an overflow panic.
fn area(dims: &[usize]) -> Result<usize, ImageError> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| invalid(format!("dimensions {dims:?} are too large")))
}

/// [0, 1] → 0..=255, clamped; NaN draws black so a broken sample is visible but harmless.
fn grey(v: f32) -> u8 {
    if v.is_nan() {
        0
    } else {
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

/// Tile n images of h×w grey values in [0,1] (clamped) into a PNG grid with `cols` columns and a 1-pixel gap; writes to `w`.
///
/// Fewer images than `cols` shrink the grid to one row of `n`; unused cells in the last row and
/// the gaps are mid-grey.
pub fn write_png_grid<W: std::io::Write>(
    w: W,
    images: &[f32],
    n: usize,
    h: usize,
    width: usize,
    cols: usize,
) -> Result<(), ImageError> {
    if n == 0 || h == 0 || width == 0 || cols == 0 {
        return Err(invalid(format!("grid needs n, h, w and cols > 0 (got n={n}, h={h}, w={width}, cols={cols})")));
    }
    if area(&[n, h, width])? != images.len() {
        return Err(invalid(format!("{} values do not form {n} images of {h}×{width}", images.len())));
    }
    let cols = cols.min(n);
    let grid_rows = n.div_ceil(cols);
    let out_w = area(&[cols, width + 1])? - 1;
    let out_h = area(&[grid_rows, h + 1])? - 1;
    let mut px = vec![GAP_GREY; area(&[out_w, out_h])?];
    for (k, img) in images.chunks_exact(h * width).enumerate() {
        let (x0, y0) = ((k % cols) * (width + 1), (k / cols) * (h + 1));
        for (r, src) in img.chunks_exact(width).enumerate() {
            let start = (y0 + r) * out_w + x0;
            for (d, &v) in px[start..start + width].iter_mut().zip(src) {
                *d = grey(v);
            }
        }
    }
    encode(w, &px, out_w, out_h, 1)
}

/// A simple chart PNG of a sorted series (e.g. the learned scaling spectrum): `values` plotted as vertical bars/line on a white background, y axis linear over [min, max], no text needed. Sizes ~ 800×300.
///
/// Bars rise from zero when zero lies inside [min, max] (so signs show), otherwise from the
/// bottom edge. Series longer than the plot width are bucketed: each pixel column draws the
/// range of its values, so spikes are not lost.
pub fn write_png_series<W: std::io::Write>(w: W, values: &[f64]) -> Result<(), ImageError> {
    if values.is_empty() {
        return Err(invalid("series is empty"));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(invalid(format!("series value {i} is {}", values[i])));
    }
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let plot_w = CHART_W - 2 * CHART_MARGIN;
    let plot_h = CHART_H - 2 * CHART_MARGIN;
    let bottom = CHART_MARGIN + plot_h - 1;
    // Value → pixel row (top = hi). A flat series sits in the middle.
    let y_of = |v: f64| -> usize {
        let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
        bottom - (t * (plot_h - 1) as f64).round() as usize
    };
    let base = if lo <= 0.0 && 0.0 <= hi { y_of(0.0) } else { bottom };

    let mut px = vec![0u8; CHART_W * CHART_H * 3];
    let mut put = |x: usize, y: usize, c: [u8; 3]| {
        let i = (y * CHART_W + x) * 3;
        px[i..i + 3].copy_from_slice(&c);
    };
    for y in 0..CHART_H {
        for x in 0..CHART_W {
            put(x, y, WHITE);
        }
    }
    let len = values.len();
    let mut prev: Option<usize> = None;
    for col in 0..plot_w {
        let a = col * len / plot_w;
        let b = ((col + 1) * len / plot_w).max(a + 1).min(len);
        let bucket = &values[a..b];
        let bmin = bucket.iter().copied().fold(f64::INFINITY, f64::min);
        let bmax = bucket.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (y_top, y_bot) = (y_of(bmax), y_of(bmin));
        let x = CHART_MARGIN + col;
        // Bar between the baseline and the value farthest from it.
        let far = if (base as isize - y_top as isize).abs() >= (y_bot as isize - base as isize).abs() {
            y_top
        } else {
            y_bot
        };
        for y in far.min(base)..=far.max(base) {
            put(x, y, BAR);
        }
        // Line: the bucket's range, joined to the previous column so steps stay connected.
        let (mut l0, mut l1) = (y_top, y_bot);
        if let Some(p) = prev {
            l0 = l0.min(p);
            l1 = l1.max(p);
        }
        for y in l0..=l1 {
            put(x, y, LINE);
        }
        prev = Some(y_of(bucket[bucket.len() - 1]));
    }
    // Axes: the baseline across, the left edge down.
    for x in CHART_MARGIN - 1..CHART_MARGIN + plot_w {
        put(x, base, AXIS);
    }
    for y in CHART_MARGIN..=bottom {
        put(CHART_MARGIN - 1, y, AXIS);
    }
    encode(w, &px, CHART_W, CHART_H, 3)
}

/// A single h×w heat map of values (e.g. per-pixel scales), min→black, max→white, upscaled by `zoom`.
///
/// A constant map is drawn mid-grey, since there is no range to show.
pub fn write_png_heatmap<W: std::io::Write>(
    w: W,
    values: &[f64],
    h: usize,
    width: usize,
    zoom: usize,
) -> Result<(), ImageError> {
    if h == 0 || width == 0 || zoom == 0 {
        return Err(invalid(format!("heat map needs h, w and zoom > 0 (got h={h}, w={width}, zoom={zoom})")));
    }
    if area(&[h, width])? != values.len() {
        return Err(invalid(format!("{} values do not form a {h}×{width} map", values.len())));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(invalid(format!("heat map value {i} is {}", values[i])));
    }
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let level = |v: f64| -> u8 {
        if hi > lo {
            ((v - lo) / (hi - lo) * 255.0).round() as u8
        } else {
            128
        }
    };
    let (out_w, out_h) = (area(&[width, zoom])?, area(&[h, zoom])?);
    let mut px = vec![0u8; area(&[out_w, out_h])?];
    for (y, line) in px.chunks_exact_mut(out_w).enumerate() {
        let src = &values[(y / zoom) * width..(y / zoom + 1) * width];
        for (x, d) in line.iter_mut().enumerate() {
            *d = level(src[x / zoom]);
        }
    }
    encode(w, &px, out_w, out_h, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a PNG into (width, height, color type, pixels).
    fn decode(bytes: &[u8]) -> (u32, u32, png::ColorType, Vec<u8>) {
        let mut reader = png::Decoder::new(bytes).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, info.color_type, buf)
    }

    #[test]
    fn grid_layout_and_pixels() {
        // Three 2×3 images, two columns: 2 grid rows → (2·3+1) × (2·2+1) = 7 × 5.
        let mut imgs = vec![0f32; 18];
        imgs[0] = 1.0; // image 0, top-left
        imgs[6 + 5] = 2.0; // image 1, bottom-right, clamped to white
        imgs[12 + 1] = 0.5; // image 2, row 0 col 1
        imgs[12 + 2] = -1.0; // clamped to black
        let mut out = Vec::new();
        write_png_grid(&mut out, &imgs, 3, 2, 3, 2).unwrap();
        let (w, h, ct, px) = decode(&out);
        assert_eq!((w, h, ct), (7, 5, png::ColorType::Grayscale));
        let at = |x: usize, y: usize| px[y * 7 + x];
        assert_eq!(at(0, 0), 255);
        assert_eq!(at(1, 0), 0);
        assert_eq!(at(3, 0), GAP_GREY); // vertical gap
        assert_eq!(at(0, 2), GAP_GREY); // horizontal gap
        assert_eq!(at(6, 1), 255); // image 1 bottom-right
        assert_eq!(at(1, 3), 128); // image 2: 0.5 → 128
        assert_eq!(at(2, 3), 0);
        assert_eq!(at(5, 4), GAP_GREY); // empty last cell
    }

    #[test]
    fn grid_shrinks_to_n_columns() {
        let mut out = Vec::new();
        write_png_grid(&mut out, &[0.0; 8], 2, 2, 2, 10).unwrap();
        let (w, h, _, _) = decode(&out);
        assert_eq!((w, h), (5, 2));
    }

    #[test]
    fn grid_bad_arguments() {
        let mut out = Vec::new();
        assert!(write_png_grid(&mut out, &[0.0; 5], 1, 2, 3, 1).is_err());
        assert!(write_png_grid(&mut out, &[], 0, 2, 3, 1).is_err());
        assert!(write_png_grid(&mut out, &[0.0; 6], 1, 2, 3, 0).is_err());
        assert!(write_png_grid(&mut out, &[0.0; 6], usize::MAX, 2, 3, 1).is_err());
    }

    #[test]
    fn series_chart() {
        let values: Vec<f64> = (0..1000).map(|i| (i as f64 / 100.0) - 3.0).collect();
        let mut out = Vec::new();
        write_png_series(&mut out, &values).unwrap();
        let (w, h, ct, px) = decode(&out);
        assert_eq!((w, h, ct), (800, 300, png::ColorType::Rgb));
        let at = |x: usize, y: usize| {
            let i = (y * 800 + x) * 3;
            [px[i], px[i + 1], px[i + 2]]
        };
        assert_eq!(at(0, 0), WHITE);
        assert_eq!(at(799, 299), WHITE);
        // Rightmost column reaches the top (max), leftmost the bottom (min).
        assert_eq!(at(CHART_W - CHART_MARGIN - 1, CHART_MARGIN), LINE);
        assert_eq!(at(CHART_MARGIN, CHART_H - CHART_MARGIN - 1), LINE);
        // Above the line on the left is background.
        assert_eq!(at(CHART_MARGIN + 1, CHART_MARGIN), WHITE);
        // Short and flat series still render.
        write_png_series(&mut Vec::new(), &[2.0]).unwrap();
        write_png_series(&mut Vec::new(), &[1.0, 1.0, 1.0]).unwrap();
    }

    #[test]
    fn series_bad_arguments() {
        assert!(write_png_series(&mut Vec::new(), &[]).is_err());
        assert!(write_png_series(&mut Vec::new(), &[1.0, f64::NAN]).is_err());
    }

    #[test]
    fn heatmap_scaling_and_zoom() {
        let mut out = Vec::new();
        write_png_heatmap(&mut out, &[0.0, 1.0, 2.0, 4.0, 3.0, 2.0], 2, 3, 4).unwrap();
        let (w, h, ct, px) = decode(&out);
        assert_eq!((w, h, ct), (12, 8, png::ColorType::Grayscale));
        let at = |x: usize, y: usize| px[y * 12 + x];
        assert_eq!(at(0, 0), 0); // min
        assert_eq!(at(3, 3), 0); // same zoomed cell
        assert_eq!(at(4, 0), 64); // 1/4
        assert_eq!(at(0, 4), 255); // max, second row
        assert_eq!(at(11, 7), 128); // 2/4
        let mut out = Vec::new();
        write_png_heatmap(&mut out, &[5.0; 4], 2, 2, 1).unwrap();
        assert!(decode(&out).3.iter().all(|&p| p == 128));
    }

    #[test]
    fn heatmap_bad_arguments() {
        assert!(write_png_heatmap(&mut Vec::new(), &[1.0; 5], 2, 3, 1).is_err());
        assert!(write_png_heatmap(&mut Vec::new(), &[1.0; 6], 2, 3, 0).is_err());
        assert!(write_png_heatmap(&mut Vec::new(), &[], 0, 3, 1).is_err());
        assert!(write_png_heatmap(&mut Vec::new(), &[f64::INFINITY; 6], 2, 3, 1).is_err());
        assert!(write_png_heatmap(&mut Vec::new(), &[1.0; 6], 2, 3, usize::MAX).is_err());
    }
}
