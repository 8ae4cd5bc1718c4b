//! The builtin renderer's frames as PNG files: encoding with deterministic bytes (the same
//! frame gives the same file, so its content hash and the task's outputs match on every run)
//! and bounded decoding into an [`Image`] (`suanli demo` reads frames back for its contact
//! sheet). It exists apart from the tracer because the tracer makes pixels and knows nothing of
//! file formats; this is the worker's one place that does.

use super::Image;

/// Largest image [`decode_png`] accepts, in pixels: twice an 8192 x 8192 frame. Guards against
/// a corrupt or hostile header asking for an enormous buffer.
const MAX_DECODE_PIXELS: u64 = 2 * 8192 * 8192;

/// Encode as PNG (RGB8). Deterministic bytes: only IHDR, IDAT and IEND chunks, no timestamps or
/// text, fixed compression settings.
///
/// # Panics
/// If `img.rgb.len() != width * height * 3` or a dimension is 0 (PNG cannot hold an empty
/// image); every [`Image`] the tracer or a contact sheet makes satisfies both.
pub fn encode_png(img: &Image) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, img.width, img.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Balanced);
    let mut writer = encoder
        .write_header()
        .expect("png header: writing to a Vec cannot fail and dimensions must be non-zero");
    writer
        .write_image_data(&img.rgb)
        .expect("png data: writing to a Vec cannot fail and rgb must match the dimensions");
    writer
        .finish()
        .expect("png end: writing to a Vec cannot fail");
    out
}

/// Decodes a PNG into RGB8 (see [`suanli_shared::image::decode_png`] for the formats it reads).
pub fn decode_png(bytes: &[u8]) -> Result<Image, String> {
    let img =
        suanli_shared::image::decode_png(bytes, MAX_DECODE_PIXELS).map_err(|e| e.to_string())?;
    Ok(Image {
        width: img.width,
        height: img.height,
        rgb: img.rgb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::tests::{render, small};

    fn png_of(
        width: u32,
        height: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        data: &[u8],
        palette: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        if let Some(palette) = palette {
            encoder.set_palette(palette.to_vec());
        }
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(data).unwrap();
        writer.finish().unwrap();
        out
    }

    #[test]
    fn png_round_trips_exactly_with_deterministic_bytes() {
        let img = render(&small(23, 11, 1), 4);
        let bytes = encode_png(&img);
        assert_eq!(bytes, encode_png(&img));
        assert_eq!(decode_png(&bytes).unwrap(), img);

        // Only the critical chunks: no time or text chunks that would vary.
        let mut chunks = Vec::new();
        let mut at = 8;
        while at + 8 <= bytes.len() {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            chunks.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
            at += 12 + len;
        }
        assert_eq!(chunks.first().map(String::as_str), Some("IHDR"));
        assert_eq!(chunks.last().map(String::as_str), Some("IEND"));
        assert!(chunks
            .iter()
            .all(|c| ["IHDR", "IDAT", "IEND"].contains(&c.as_str())));
    }

    #[test]
    fn decodes_rgba_dropping_alpha() {
        let data = [255, 0, 0, 255, 0, 128, 255, 0, 10, 20, 30, 77];
        let bytes = png_of(
            3,
            1,
            png::ColorType::Rgba,
            png::BitDepth::Eight,
            &data,
            None,
        );
        let img = decode_png(&bytes).unwrap();
        assert_eq!((img.width, img.height), (3, 1));
        assert_eq!(img.rgb, [255, 0, 0, 0, 128, 255, 10, 20, 30]);
    }

    #[test]
    fn decodes_16_bit_rgb_and_gray_alpha() {
        let rgb16: Vec<u8> = [0x1234u16, 0xff00, 0x00ff, 0xabcd, 0x0000, 0xffff]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let bytes = png_of(
            2,
            1,
            png::ColorType::Rgb,
            png::BitDepth::Sixteen,
            &rgb16,
            None,
        );
        assert_eq!(
            decode_png(&bytes).unwrap().rgb,
            [0x12, 0xff, 0x00, 0xab, 0x00, 0xff]
        );

        let gray_alpha16 = [0x80, 0x01, 0x00, 0x00, 0x07, 0xff, 0xff, 0xff];
        let bytes = png_of(
            1,
            2,
            png::ColorType::GrayscaleAlpha,
            png::BitDepth::Sixteen,
            &gray_alpha16,
            None,
        );
        assert_eq!(decode_png(&bytes).unwrap().rgb, [0x80, 0x80, 0x80, 7, 7, 7]);
    }

    #[test]
    fn decodes_palette_and_gray() {
        let palette = [10, 20, 30, 200, 100, 50];
        let bytes = png_of(
            3,
            1,
            png::ColorType::Indexed,
            png::BitDepth::Eight,
            &[1, 0, 1],
            Some(&palette),
        );
        assert_eq!(
            decode_png(&bytes).unwrap().rgb,
            [200, 100, 50, 10, 20, 30, 200, 100, 50]
        );

        let bytes = png_of(
            2,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::Eight,
            &[0, 99],
            None,
        );
        assert_eq!(decode_png(&bytes).unwrap().rgb, [0, 0, 0, 99, 99, 99]);

        // Low bit depths are scaled to the full 8-bit range.
        let bytes = png_of(
            2,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::One,
            &[0x80],
            None,
        );
        assert_eq!(decode_png(&bytes).unwrap().rgb, [255, 255, 255, 0, 0, 0]);
    }

    #[test]
    fn garbage_and_truncated_png_are_errors() {
        let err = decode_png(b"definitely not a png").unwrap_err();
        assert!(err.starts_with("not a valid png"), "{err}");
        assert!(decode_png(&[]).is_err());

        let bytes = encode_png(&render(&small(16, 16, 1), 1));
        let err = decode_png(&bytes[..bytes.len() / 2]).unwrap_err();
        assert!(
            err.chars().next().is_some_and(|c| c.is_lowercase()),
            "{err}"
        );
    }
}
