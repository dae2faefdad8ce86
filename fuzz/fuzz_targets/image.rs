//! The image loading path: file bytes → `decode` (format sniffing, size limit, EXIF
//! orientation, alpha on white) → `fit` to SD's automatic size → pixels for the VAE; and
//! `decode_like_pil` (libjpeg-turbo for JPEGs, how `eval-edit` reads benchmark photos).
//! Any `Err` is fine; a panic, an abort or running out of memory is a bug.
#![no_main]

use edict_pipeline::io::image_io::{Size, decode, decode_like_pil, fit, to_pixels};
use libfuzzer_sys::fuzz_target;

/// SD 1.x's native long side, what `fit` is given for those models.
const LONG_SIDE: u32 = 512;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = decode_like_pil(data) {
        assert_eq!(img.as_raw().len(), 3 * (img.width() * img.height()) as usize);
    }
    let Ok(img) = decode(data) else {
        return;
    };
    let Ok((fitted, what)) = fit(img, Size::Auto, LONG_SIDE) else {
        return;
    };
    let (w, h) = fitted.dimensions();
    assert!(w % 64 == 0 && h % 64 == 0 && w > 0 && h > 0, "{w}×{h}: {what}");
    assert!(w.max(h) <= LONG_SIDE, "{w}×{h}: {what}");
    let px = to_pixels(&fitted);
    assert_eq!(px.len(), 3 * (w * h) as usize);
    assert!(px.iter().all(|v| (-1.0..=1.0).contains(v)));
});
