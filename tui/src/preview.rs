//! The frame preview: a PNG from the store, decoded and shrunk off the UI thread into a small
//! [`Thumb`], then drawn with half-block characters (`▀`: the top pixel in the foreground
//! colour, the bottom one in the background), two pixels per cell. Without colour it falls
//! back to a luminance ramp of ASCII characters.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::widgets::Widget;

use crate::theme::Theme;

/// Largest thumbnail kept: enough for a full-screen preview on a 200-column terminal.
pub const MAX_THUMB_WIDTH: u32 = 200;
pub const MAX_THUMB_HEIGHT: u32 = 120;
/// Larger images are refused rather than decoded (a preview is not worth 1 GiB of memory).
const MAX_DECODE_PIXELS: u64 = 64 * 1024 * 1024;

/// A small RGB image.
#[derive(Debug, Clone, PartialEq)]
pub struct Thumb {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes, rows top to bottom.
    pub rgb: Vec<u8>,
    /// Size of the frame it was made from.
    pub source: (u32, u32),
}

impl Thumb {
    fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = ((y.min(self.height - 1) * self.width + x.min(self.width - 1)) * 3) as usize;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

/// Decodes a PNG (8 or 16 bit, grey, RGB, with or without alpha, palette) and shrinks it to
/// fit [`MAX_THUMB_WIDTH`] x [`MAX_THUMB_HEIGHT`], averaging the pixels each one covers.
/// Blocking: call it from `spawn_blocking`.
pub fn decode_thumb(bytes: &[u8]) -> Result<Thumb, String> {
    let img = suanli_shared::image::decode_png(bytes, MAX_DECODE_PIXELS).map_err(|e| match e {
        suanli_shared::image::PngError::TooLarge { width, height, .. } => {
            format!("frame of {width}x{height} pixels is too large to preview")
        }
        other => other.to_string(),
    })?;
    let (w, h) = (img.width, img.height);
    let rgb_at = |x: u32, y: u32| -> [u8; 3] {
        let i = (y as usize * w as usize + x as usize) * 3;
        [img.rgb[i], img.rgb[i + 1], img.rgb[i + 2]]
    };
    let scale = (w as f64 / MAX_THUMB_WIDTH as f64)
        .max(h as f64 / MAX_THUMB_HEIGHT as f64)
        .max(1.0);
    let tw = ((w as f64 / scale).round() as u32).max(1);
    let th = ((h as f64 / scale).round() as u32).max(1);
    let mut rgb = Vec::with_capacity((tw * th * 3) as usize);
    for ty in 0..th {
        let y0 = (ty as u64 * h as u64 / th as u64) as u32;
        let y1 = (((ty + 1) as u64 * h as u64 / th as u64) as u32).max(y0 + 1);
        for tx in 0..tw {
            let x0 = (tx as u64 * w as u64 / tw as u64) as u32;
            let x1 = (((tx + 1) as u64 * w as u64 / tw as u64) as u32).max(x0 + 1);
            let mut sum = [0u64; 3];
            for y in y0..y1 {
                for x in x0..x1 {
                    let p = rgb_at(x, y);
                    for c in 0..3 {
                        sum[c] += p[c] as u64;
                    }
                }
            }
            let n = ((y1 - y0) * (x1 - x0)) as u64;
            rgb.extend(sum.map(|s| (s / n) as u8));
        }
    }
    Ok(Thumb {
        width: tw,
        height: th,
        rgb,
        source: (w, h),
    })
}

const RAMP: &[u8] = b" .:-=+*#%@";

/// Draws a [`Thumb`] fitted into its area (aspect kept, centred).
pub struct PreviewWidget<'a> {
    pub thumb: &'a Thumb,
    pub theme: Theme,
}

impl Widget for PreviewWidget<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let t = self.thumb;
        if area.width == 0 || area.height == 0 || t.width == 0 || t.height == 0 {
            return;
        }
        // A cell is about twice as tall as it is wide: two pixel rows per cell keep the
        // pixels square.
        let (aw, ah) = (area.width as f64, area.height as f64 * 2.0);
        let scale = (aw / t.width as f64).min(ah / t.height as f64);
        let pw = ((t.width as f64 * scale).round() as u16).clamp(1, area.width);
        let ph = ((t.height as f64 * scale).round() as u16).clamp(1, area.height * 2);
        let x_off = area.x + (area.width - pw) / 2;
        let y_off = area.y + (area.height - ph.div_ceil(2)) / 2;
        let sample = |px: u16, py: u16| -> [u8; 3] {
            let sx = (px as u64 * t.width as u64 / pw as u64) as u32;
            let sy = (py as u64 * t.height as u64 / ph as u64) as u32;
            t.pixel(sx, sy)
        };
        for cy in 0..ph.div_ceil(2) {
            for cx in 0..pw {
                let top = sample(cx, cy * 2);
                let bottom = if cy * 2 + 1 < ph {
                    Some(sample(cx, cy * 2 + 1))
                } else {
                    None
                };
                let Some(cell) = buf.cell_mut((x_off + cx, y_off + cy)) else {
                    continue;
                };
                if self.theme.color {
                    cell.set_char('▀').set_fg(rgb(top));
                    if let Some(b) = bottom {
                        cell.set_bg(rgb(b));
                    }
                } else {
                    let l = (luma(top) + bottom.map_or(luma(top), luma)) / 2;
                    let steps = RAMP.len() as u32 - 1;
                    let i = ((l * steps + 127) / 255).min(steps) as usize;
                    cell.set_char(RAMP[i] as char);
                }
            }
        }
    }
}

fn rgb(p: [u8; 3]) -> Color {
    Color::Rgb(p[0], p[1], p[2])
}

/// Rec. 709 luma, 0..=255, in integers so that white is exactly 255.
fn luma(p: [u8; 3]) -> u32 {
    (2126 * p[0] as u32 + 7152 * p[1] as u32 + 722 * p[2] as u32) / 10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_of(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().unwrap();
        let data: Vec<u8> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .flat_map(|(x, y)| f(x, y))
            .collect();
        wr.write_image_data(&data).unwrap();
        wr.finish().unwrap();
        out
    }

    #[test]
    fn large_frames_shrink_and_keep_their_colours() {
        // Left half red, right half blue, 640x360: the thumb is 200x113 with the same halves.
        let bytes = png_of(
            640,
            360,
            |x, _| if x < 320 { [255, 0, 0] } else { [0, 0, 255] },
        );
        let t = decode_thumb(&bytes).unwrap();
        assert_eq!((t.width, t.height), (200, 113));
        assert_eq!(t.source, (640, 360));
        assert_eq!(t.pixel(10, 50), [255, 0, 0]);
        assert_eq!(t.pixel(190, 50), [0, 0, 255]);
        assert!(decode_thumb(b"not a png").is_err());
    }

    /// `thumb` drawn by the widget into a buffer one line high and `width` cells wide.
    fn draw(thumb: &Thumb, theme: Theme, width: u16) -> Buffer {
        let mut buf = Buffer::empty(Rect::new(0, 0, width, 1));
        PreviewWidget { thumb, theme }.render(buf.area, &mut buf);
        buf
    }

    #[test]
    fn half_blocks_carry_two_pixels_per_cell() {
        // Top row white, bottom row black: one cell, '▀' white on black.
        let bytes = png_of(2, 2, |_, y| if y == 0 { [255; 3] } else { [0; 3] });
        let t = decode_thumb(&bytes).unwrap();
        let buf = draw(&t, Theme::colored(), 2);
        let cell = &buf[(0, 0)];
        assert_eq!(cell.symbol(), "▀");
        assert_eq!(cell.fg, Color::Rgb(255, 255, 255));
        assert_eq!(cell.bg, Color::Rgb(0, 0, 0));
        // Without colour, the same cell is mid-grey on the ramp; white is '@', black ' '.
        let buf = draw(&t, Theme::plain(), 2);
        assert_eq!(buf[(0, 0)].symbol(), "=");
        let white = Thumb {
            width: 1,
            height: 1,
            rgb: vec![255; 3],
            source: (1, 1),
        };
        let buf = draw(&white, Theme::plain(), 1);
        assert_eq!(buf[(0, 0)].symbol(), "@");
    }
}
