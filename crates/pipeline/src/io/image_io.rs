//! Photos in and out: decode any format the `image` crate reads, honour EXIF orientation,
//! composite alpha on white, and size the picture for SD (multiples of 64 by default).

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage, imageops::FilterType};

use crate::error::{PipelineError, Result};

/// Largest image accepted for decoding (pixels); larger ones are refused before the decoder
/// allocates, so a 16000×16000 file cannot exhaust memory.
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// An RGB image, 8 bits per channel, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// How to size the picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Size {
    /// The model's default long side (see `SdConfigs::default_long_side`), then both sides
    /// rounded down to multiples of 64 by a centred crop.
    #[default]
    Auto,
    /// Exactly this size (multiples of 8); no resampling when the image already has it.
    Exact { width: u32, height: u32 },
}

impl Size {
    pub fn exact(width: u32, height: u32) -> Result<Self> {
        if width == 0 || height == 0 || width % 8 != 0 || height % 8 != 0 {
            return Err(PipelineError::Invalid(format!(
                "width and height must be positive multiples of 8, got {width}×{height}"
            )));
        }
        check_pixels(width as u64, height as u64)?;
        Ok(Self::Exact { width, height })
    }
}

/// Refuses a size to make or edit above [`MAX_PIXELS`].
pub fn check_pixels(width: u64, height: u64) -> Result<()> {
    if width * height > MAX_PIXELS {
        return Err(PipelineError::Invalid(format!(
            "{width}×{height} is larger than the {} Mpixel limit",
            MAX_PIXELS >> 20
        )));
    }
    Ok(())
}

/// Decodes an image file's bytes into RGB, applying EXIF orientation and compositing alpha
/// on white. Animated formats give their first frame.
pub fn decode(bytes: &[u8]) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(PipelineError::Image("the file is empty".into()));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| PipelineError::Image(e.to_string()))?;
    if reader.format().is_none() {
        return Err(PipelineError::Image("not an image format this program reads".into()));
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| PipelineError::Image(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    check_decodable(w as u64, h as u64)?;
    decoder
        .set_limits(limits)
        .map_err(|e| PipelineError::Image(e.to_string()))?;
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| PipelineError::Image(e.to_string()))?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(flatten_on_white(img))
}

/// Decodes an image as Pillow's `Image.open(f).convert("RGB")` does, which is how benchmark
/// scripts read their images: JPEGs through libjpeg-turbo with its default (accurate) DCT and
/// smooth chroma upsampling, Pillow's decoder, bit for bit; no EXIF rotation. Other formats go
/// through [`decode`], which gives Pillow's pixels for 8-bit RGB and grey files (not for alpha,
/// which it composites on white where Pillow drops it). Native only.
#[cfg(not(target_arch = "wasm32"))]
pub fn decode_like_pil(bytes: &[u8]) -> Result<RgbImage> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return decode(bytes);
    }
    let bad = |e: turbojpeg::Error| PipelineError::Image(format!("JPEG: {e}"));
    let mut decompressor = turbojpeg::Decompressor::new().map_err(bad)?;
    let header = decompressor.read_header(bytes).map_err(bad)?;
    let (width, height) = (header.width, header.height);
    check_decodable(width as u64, height as u64)?;
    // decoded straight into the image's rows
    let mut img = RgbImage::new(width as u32, height as u32);
    let output = turbojpeg::Image { pixels: &mut *img, width, pitch: 3 * width, height, format: turbojpeg::PixelFormat::RGB };
    decompressor.decompress(bytes, output).map_err(bad)?;
    Ok(img)
}

/// Refuses, before decoding, an image above [`MAX_PIXELS`].
fn check_decodable(w: u64, h: u64) -> Result<()> {
    if w * h > MAX_PIXELS {
        return Err(PipelineError::Image(format!("{w}×{h} is too large (over {} megapixels); downscale it first", MAX_PIXELS / (1024 * 1024))));
    }
    Ok(())
}

fn flatten_on_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba32f();
    let (w, h) = rgba.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = p[3].clamp(0.0, 1.0);
        image::Rgb(std::array::from_fn(|c| {
            ((p[c].clamp(0.0, 1.0) * a + (1.0 - a)) * 255.0).round() as u8
        }))
    })
}

/// What [`fit`] does to a `w`×`h` image: resize to `resized`, then centre-crop to `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fitting {
    pub resized: (u32, u32),
    pub size: (u32, u32),
}

/// How [`fit`] sizes a `w`×`h` image by `size`, `long_side` being the model's default: known
/// before any pixel is touched, so a size that cannot run is refused first.
pub fn fitting((w, h): (u32, u32), size: Size, long_side: u32) -> Result<Fitting> {
    match size {
        Size::Exact { width, height } => Ok(Fitting { resized: (width, height), size: (width, height) }),
        Size::Auto => {
            let scale = long_side as f64 / w.max(h) as f64;
            let resized = (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
            let size = (resized.0 / 64 * 64, resized.1 / 64 * 64);
            if size.0 == 0 || size.1 == 0 {
                return Err(PipelineError::Image(format!(
                    "{w}×{h} is too narrow: at long side {long_side} the short side is under 64 pixels"
                )));
            }
            Ok(Fitting { resized, size })
        }
    }
}

/// Sizes `img` by `size`, `long_side` being the model's default ([`fitting`]); returns the
/// result and a sentence saying what was done.
pub fn fit(img: RgbImage, size: Size, long_side: u32) -> Result<(RgbImage, String)> {
    let (w, h) = img.dimensions();
    let Fitting { resized: (rw, rh), size: (cw, ch) } = fitting((w, h), size, long_side)?;
    if let Size::Exact { .. } = size {
        return Ok(if (w, h) == (cw, ch) {
            (img, format!("{w}×{h}, used as is"))
        } else {
            (image::imageops::resize(&img, cw, ch, FilterType::Lanczos3), format!("{w}×{h} resized to {cw}×{ch}"))
        });
    }
    let resized = if (rw, rh) == (w, h) {
        img
    } else {
        image::imageops::resize(&img, rw, rh, FilterType::Lanczos3)
    };
    let (x0, y0) = ((rw - cw) / 2, (rh - ch) / 2);
    let cropped = image::imageops::crop_imm(&resized, x0, y0, cw, ch).to_image();
    let mut what = format!("{w}×{h}");
    if (rw, rh) != (w, h) {
        what += &format!(" resized to {rw}×{rh}");
    }
    if (cw, ch) != (rw, rh) {
        what += &format!(", centre-cropped to {cw}×{ch} (multiples of 64)");
    }
    Ok((cropped, what))
}

/// `[1, 3, h, w]` pixels in [−1, 1] for the VAE.
pub fn to_pixels(img: &RgbImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let n = (w * h) as usize;
    let mut out = vec![0f32; 3 * n];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * n + i] = p.0[c] as f32 / 127.5 - 1.0;
        }
    }
    out
}

pub fn from_rgb(img: &RgbImage) -> Rgb {
    Rgb {
        width: img.width() as usize,
        height: img.height() as usize,
        data: img.as_raw().clone(),
    }
}

/// PNG bytes of an RGB image.
pub fn encode_png(img: &Rgb) -> Result<Vec<u8>> {
    let buf = RgbImage::from_raw(img.width as u32, img.height as u32, img.data.clone())
        .ok_or_else(|| PipelineError::Image("pixel buffer does not match its size".into()))?;
    let mut out = Vec::new();
    buf.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| PipelineError::Image(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_size_rule() {
        let img = RgbImage::new(1000, 600);
        let (out, what) = fit(img, Size::Auto, 512).unwrap();
        assert_eq!(out.dimensions(), (512, 256));
        assert!(what.contains("1000×600 resized to 512×307"), "{what}");
        assert_eq!(fitting((1000, 600), Size::Auto, 512).unwrap(), Fitting { resized: (512, 307), size: (512, 256) });
        let same = RgbImage::new(512, 512);
        assert_eq!(fit(same, Size::Auto, 512).unwrap().0.dimensions(), (512, 512));
        assert!(fit(RgbImage::new(2000, 20), Size::Auto, 512).is_err());
        // SD 2.x at 768: long side 768
        assert_eq!(fit(RgbImage::new(2000, 1000), Size::Auto, 768).unwrap().0.dimensions(), (768, 384));
    }

    #[test]
    fn exact_size_rule() {
        assert!(Size::exact(100, 64).is_err());
        assert!(Size::exact(0, 64).is_err());
        assert!(Size::exact(8192, 8192).is_ok());
        let err = Size::exact(8192, 8200).unwrap_err().to_string();
        assert!(err.contains("64 Mpixel limit"), "{err}");
        let (out, what) = fit(RgbImage::new(64, 128), Size::exact(64, 128).unwrap(), 512).unwrap();
        assert_eq!(out.dimensions(), (64, 128));
        assert!(what.contains("as is"));
        let (out, _) = fit(RgbImage::new(30, 30), Size::exact(64, 64).unwrap(), 512).unwrap();
        assert_eq!(out.dimensions(), (64, 64));
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert!(decode(b"").is_err());
        assert!(decode(b"definitely not an image").is_err());
        let mut png = Vec::new();
        RgbImage::new(8, 8)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert!(decode(&png[..png.len() / 2]).is_err());
        assert_eq!(decode(&png).unwrap().dimensions(), (8, 8));
    }

    fn encode(img: DynamicImage, format: image::ImageFormat) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), format).unwrap();
        out
    }

    #[test]
    fn odd_pixel_formats_become_rgb() {
        let gray = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(4, 3, image::Luma([200])));
        let out = decode(&encode(gray, image::ImageFormat::Png)).unwrap();
        assert_eq!((out.dimensions(), out.get_pixel(0, 0).0), ((4, 3), [200, 200, 200]));
        let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(2, 2, image::Rgb([65535u16, 0, 32896])));
        let out = decode(&encode(deep, image::ImageFormat::Png)).unwrap();
        assert_eq!(out.get_pixel(1, 1).0, [255, 0, 128]);
        // an animated GIF gives its first frame
        let mut gif = Vec::new();
        {
            let mut enc = image::codecs::gif::GifEncoder::new(&mut gif);
            for v in [10u8, 250] {
                let frame = image::RgbaImage::from_pixel(3, 3, image::Rgba([v, v, v, 255]));
                enc.encode_frame(image::Frame::new(frame)).unwrap();
            }
        }
        let first = decode(&gif).unwrap().get_pixel(0, 0).0[0];
        assert!(first < 40, "expected the dark first frame, got {first}");
    }

    #[test]
    fn tiny_and_huge_images_are_refused_before_decoding() {
        // a 1×1 picture is simply upscaled
        let one = decode(&encode(DynamicImage::new_rgb8(1, 1), image::ImageFormat::Png)).unwrap();
        assert_eq!(fit(one, Size::Auto, 512).unwrap().0.dimensions(), (512, 512));
        // a BMP header claiming 16000×16000 with no pixel data behind it
        let (w, h) = (16000u32, 16000u32);
        let mut bmp = b"BM".to_vec();
        bmp.extend(0u32.to_le_bytes()); // file size (unchecked)
        bmp.extend(0u32.to_le_bytes());
        bmp.extend(54u32.to_le_bytes()); // pixel data offset
        bmp.extend(40u32.to_le_bytes()); // BITMAPINFOHEADER
        bmp.extend((w as i32).to_le_bytes());
        bmp.extend((h as i32).to_le_bytes());
        bmp.extend(1u16.to_le_bytes());
        bmp.extend(24u16.to_le_bytes());
        bmp.extend([0u8; 24]);
        let err = decode(&bmp).unwrap_err().to_string();
        assert!(err.contains("too large"), "{err}");
    }

    #[test]
    fn alpha_composites_on_white() {
        let mut rgba = image::RgbaImage::new(2, 1);
        rgba.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
        rgba.put_pixel(1, 0, image::Rgba([0, 0, 0, 255]));
        let mut png = Vec::new();
        rgba.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        let out = decode(&png).unwrap();
        assert_eq!(out.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(out.get_pixel(1, 0).0, [0, 0, 0]);
    }
}
