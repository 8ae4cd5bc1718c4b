//! PNG decoding, in one place: the worker reads frames back (contact sheets, output checks) and
//! the operator terminal previews them. Decoding is bounded: a PNG whose header claims more
//! pixels than the caller allows is refused before any pixel buffer is allocated.

/// An 8-bit RGB image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes: R, G, B for each pixel, rows top to bottom.
    pub rgb: Vec<u8>,
}

/// Why a PNG could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PngError {
    #[error("not a valid png (bad header): {0}")]
    Header(String),
    #[error("png too large: {width}x{height} exceeds {max_pixels} pixels")]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error("corrupt png image data: {0}")]
    Data(String),
    #[error("unexpected png layout: {0}")]
    Layout(String),
}

/// Decodes any 8/16-bit PNG (gray, gray+alpha, RGB, RGBA, palette; also 1/2/4-bit gray) into
/// RGB8: 16-bit samples keep their high byte, alpha is dropped (not composited), gray is copied
/// to all three channels. Only the first frame of an animated PNG is read. An empty image or
/// one of more than `max_pixels` pixels is refused. Blocking: call it off the async runtime.
pub fn decode_png(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, PngError> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| PngError::Header(e.to_string()))?;
    let (width, height) = reader.info().size();
    let too_large = PngError::TooLarge {
        width,
        height,
        max_pixels,
    };
    if width == 0 || height == 0 || u64::from(width) * u64::from(height) > max_pixels {
        return Err(too_large);
    }
    let size = reader.output_buffer_size().ok_or(too_large)?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| PngError::Data(e.to_string()))?;
    let (width, height) = (info.width, info.height);
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(PngError::Layout("palette could not be expanded".into()))
        }
    };
    let stride = info.line_size;
    let row_bytes = width as usize * channels;
    if info.bit_depth != png::BitDepth::Eight
        || stride < row_bytes
        || buf.len() < stride * height as usize
    {
        return Err(PngError::Layout(format!(
            "{:?} at {:?} bits",
            info.color_type, info.bit_depth
        )));
    }
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for row in buf.chunks(stride).take(height as usize) {
        let px = row[..row_bytes].chunks_exact(channels);
        match channels {
            1 | 2 => rgb.extend(px.flat_map(|p| [p[0], p[0], p[0]])),
            _ => rgb.extend(px.flat_map(|p| [p[0], p[1], p[2]])),
        }
    }
    Ok(RgbImage { width, height, rgb })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(width: u32, height: u32, color: png::ColorType, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(data).unwrap();
        w.finish().unwrap();
        out
    }

    #[test]
    fn gray_rgb_and_rgba_decode_to_rgb() {
        let gray = encode(2, 1, png::ColorType::Grayscale, &[10, 200]);
        assert_eq!(
            decode_png(&gray, 100).unwrap().rgb,
            vec![10, 10, 10, 200, 200, 200]
        );
        let rgba = encode(1, 2, png::ColorType::Rgba, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let img = decode_png(&rgba, 100).unwrap();
        assert_eq!((img.width, img.height), (1, 2));
        assert_eq!(img.rgb, vec![1, 2, 3, 5, 6, 7]);
    }

    #[test]
    fn oversize_and_garbage_are_refused() {
        let rgb = encode(4, 4, png::ColorType::Rgb, &[0; 48]);
        assert!(matches!(
            decode_png(&rgb, 15),
            Err(PngError::TooLarge {
                width: 4,
                height: 4,
                ..
            })
        ));
        assert!(matches!(decode_png(b"nope", 15), Err(PngError::Header(_))));
    }
}
