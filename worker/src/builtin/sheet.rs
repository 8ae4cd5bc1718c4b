//! Contact sheets: many frames tiled into one image, so that a whole job can be checked at a
//! glance (`suanli demo`). It exists apart from the tracer because it
//! works on any frames, only sharing the tracer's sRGB tables to average in linear light.

use super::{linear_to_srgb8, Image, SRGB_TO_LINEAR};

/// Gap between thumbnails (and around the sheet's edge), in pixels.
const SHEET_GAP: u32 = 4;
/// Colour of the gaps.
const SHEET_GAP_RGB: [u8; 3] = [20, 20, 24];

/// Tile frames into one contact sheet: `columns` per row, each thumbnail `thumb_width` wide
/// (height kept in proportion, box-filter downscale in linear light), 4 px dark gaps between
/// thumbnails and around the edge, frames in the given order, left to right then top to bottom.
/// Frames may differ in size (each is scaled to `thumb_width`); every row is as tall as the
/// tallest thumbnail, and shorter ones are centred vertically. With `n` frames and
/// `c = min(columns, n)` the sheet is `c * thumb_width + (c + 1) * 4` wide and
/// `rows * cell_height + (rows + 1) * 4` high. Empty input gives a 1x1 black image.
/// `columns` and `thumb_width` of 0 count as 1; a malformed frame (a zero dimension or a short
/// buffer) becomes a black thumbnail.
pub fn contact_sheet(frames: &[Image], columns: u32, thumb_width: u32) -> Image {
    if frames.is_empty() {
        return Image {
            width: 1,
            height: 1,
            rgb: vec![0; 3],
        };
    }
    let thumb_width = thumb_width.max(1);
    let count = u32::try_from(frames.len()).unwrap_or(u32::MAX);
    let columns = columns.clamp(1, count);
    let rows = count.div_ceil(columns);
    let thumbs: Vec<Image> = frames.iter().map(|f| downscale(f, thumb_width)).collect();
    let cell_height = thumbs.iter().map(|t| t.height).max().unwrap_or(1);

    let width = columns * thumb_width + (columns + 1) * SHEET_GAP;
    let height = rows * cell_height + (rows + 1) * SHEET_GAP;
    let mut rgb = SHEET_GAP_RGB.repeat(width as usize * height as usize);
    for (i, thumb) in thumbs.iter().enumerate() {
        let i = i as u32;
        let left = SHEET_GAP + (i % columns) * (thumb_width + SHEET_GAP);
        let top = SHEET_GAP
            + (i / columns) * (cell_height + SHEET_GAP)
            + (cell_height - thumb.height) / 2;
        let row_bytes = thumb.width as usize * 3;
        for (ty, src) in thumb.rgb.chunks_exact(row_bytes).enumerate() {
            let start = ((top as usize + ty) * width as usize + left as usize) * 3;
            rgb[start..start + row_bytes].copy_from_slice(src);
        }
    }
    Image { width, height, rgb }
}

/// Scale `img` to `width` pixels wide, keeping its aspect ratio (at least 1 pixel high), by
/// averaging each output pixel's footprint in linear light (a box filter; nearest-neighbour when
/// enlarging).
fn downscale(img: &Image, width: u32) -> Image {
    let (sw, sh) = (img.width as usize, img.height as usize);
    let valid = sw > 0 && sh > 0 && img.rgb.len() >= sw * sh * 3;
    let height = if valid {
        let h = (u64::from(img.height) * u64::from(width) + u64::from(img.width) / 2)
            / u64::from(img.width);
        u32::try_from(h.max(1)).unwrap_or(u32::MAX)
    } else {
        1
    };
    if !valid {
        return Image {
            width,
            height,
            rgb: vec![0; width as usize * height as usize * 3],
        };
    }
    // Source range [start, end) covered by output pixel `i` of `n` over `len` source pixels.
    let span = |i: usize, n: usize, len: usize| {
        let start = i * len / n;
        let end = ((i + 1) * len / n).clamp(start + 1, len);
        (start, end)
    };
    let (dw, dh) = (width as usize, height as usize);
    let x_spans: Vec<(usize, usize)> = (0..dw).map(|x| span(x, dw, sw)).collect();
    let mut rgb = Vec::with_capacity(dw * dh * 3);
    for y in 0..dh {
        let (y0, y1) = span(y, dh, sh);
        for &(x0, x1) in &x_spans {
            let mut sum = [0.0f64; 3];
            for sy in y0..y1 {
                let row = &img.rgb[(sy * sw + x0) * 3..(sy * sw + x1) * 3];
                for px in row.chunks_exact(3) {
                    for (acc, &v) in sum.iter_mut().zip(px) {
                        *acc += SRGB_TO_LINEAR[usize::from(v)];
                    }
                }
            }
            let inv = 1.0 / ((x1 - x0) * (y1 - y0)) as f64;
            rgb.extend(sum.iter().map(|&s| linear_to_srgb8(s * inv)));
        }
    }
    Image { width, height, rgb }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(width: u32, height: u32, rgb: [u8; 3]) -> Image {
        Image {
            width,
            height,
            rgb: rgb.repeat(width as usize * height as usize),
        }
    }

    #[test]
    fn contact_sheet_has_expected_layout() {
        let frames: Vec<Image> = (0..10u8)
            .map(|i| solid(32, 18, [i * 20, 100, 200]))
            .collect();
        let sheet = contact_sheet(&frames, 4, 16);
        // 4 columns of 16 px, 3 rows of 9 px, 4 px gaps around and between.
        assert_eq!((sheet.width, sheet.height), (4 * 16 + 5 * 4, 3 * 9 + 4 * 4));
        assert_eq!(sheet.rgb.len(), (sheet.width * sheet.height * 3) as usize);
        let px = |x: u32, y: u32| {
            let i = ((y * sheet.width + x) * 3) as usize;
            [sheet.rgb[i], sheet.rgb[i + 1], sheet.rgb[i + 2]]
        };
        assert_eq!(px(0, 0), SHEET_GAP_RGB);
        // Frame 5 is row 1, column 1; a solid colour survives the box filter unchanged.
        assert_eq!(px(4 + 20 + 3, 4 + 13 + 2), [100, 100, 200]);
        // Frame 9 is row 2, column 1; row 2 column 2 is empty and stays gap-coloured.
        assert_eq!(px(4 + 20 + 15, 4 + 26 + 8), [180, 100, 200]);
        assert_eq!(px(4 + 40 + 1, 4 + 26 + 1), SHEET_GAP_RGB);
    }

    #[test]
    fn contact_sheet_handles_mixed_sizes_and_edge_cases() {
        let frames = [
            solid(320, 180, [255, 0, 0]),
            solid(10, 10, [0, 255, 0]),
            solid(3, 7, [0, 0, 255]),
        ];
        let sheet = contact_sheet(&frames, 8, 20);
        // Thumbnails 20x11, 20x20 and 20x47: one row of 3, as tall as the tallest.
        assert_eq!((sheet.width, sheet.height), (3 * 20 + 4 * 4, 47 + 2 * 4));

        let empty = contact_sheet(&[], 4, 64);
        assert_eq!(empty, solid(1, 1, [0, 0, 0]));

        let one = contact_sheet(&frames[..1], 0, 0);
        assert_eq!((one.width, one.height), (1 + 2 * 4, 1 + 2 * 4));

        let broken = Image {
            width: 5,
            height: 5,
            rgb: vec![1; 4],
        };
        let sheet = contact_sheet(&[broken], 1, 8);
        assert_eq!((sheet.width, sheet.height), (8 + 2 * 4, 1 + 2 * 4));
    }

    #[test]
    fn downscale_averages_in_linear_light() {
        // Black and white stripes average to mid-grey in linear light, which is sRGB 188.
        let mut img = solid(2, 1, [0, 0, 0]);
        img.rgb[3..].copy_from_slice(&[255, 255, 255]);
        assert_eq!(downscale(&img, 1).rgb, [188, 188, 188]);
    }
}
