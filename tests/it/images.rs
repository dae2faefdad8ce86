//! Photos users actually have: JPEG variants from the fuzz seed corpus (made by
//! fuzz/scripts/make_seeds.py with Pillow), and full-size JPEG photos decoded and resized as
//! Pillow does (tests/reference/make_pil_images.py).

use edict_pipeline::io::image_io::{decode, decode_like_pil};
use edict_sd::models::clip_score::resize_bicubic_like_pil;
use sha2::{Digest, Sha256};

use crate::common::fixtures;

fn seed(name: &str) -> Vec<u8> {
    std::fs::read(crate::common::root().join("fuzz/corpus/image").join(name)).unwrap()
}

#[test]
fn exif_orientation_is_applied() {
    // stored 16×8 with orientation 6 (rotate 90°): shown 8×16
    assert_eq!(decode(&seed("exif_rotated.jpg")).unwrap().dimensions(), (8, 16));
    assert_eq!(decode(&seed("baseline.jpg")).unwrap().dimensions(), (16, 16));
}

#[test]
fn cmyk_and_progressive_jpegs_decode_to_rgb() {
    assert_eq!(decode(&seed("cmyk.jpg")).unwrap().dimensions(), (8, 8));
    assert_eq!(decode(&seed("progressive.jpg")).unwrap().dimensions(), (16, 16));
}

#[test]
fn truncated_jpeg_is_an_error() {
    let jpg = seed("baseline.jpg");
    for decoded in [decode(&jpg[..jpg.len() / 2]), decode_like_pil(&jpg[..jpg.len() / 2])] {
        let err = decoded.unwrap_err().to_string();
        assert!(err.starts_with("image:"), "{err}");
    }
}

/// Pillow 13.0.0 (libjpeg-turbo 3.2.0) on scikit-image's photos saved as JPEG with 4:2:0 and 4:4:4
/// chroma and in grey: `Image.open(f).convert("RGB")`, and that image resized as
/// CLIPImageProcessor does (shortest edge 224, bicubic); both must be Pillow's bytes.
#[test]
fn jpegs_decode_and_resize_as_pillow_does() {
    let refs: serde_json::Value = serde_json::from_slice(&std::fs::read(fixtures().join("reference/pil_images.json")).unwrap()).unwrap();
    let sha = |b: &[u8]| Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect::<String>();
    let size = |v: &serde_json::Value| (v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32);
    let mut wrong = Vec::new();
    for (name, r) in refs["files"].as_object().unwrap() {
        let img = decode_like_pil(&std::fs::read(fixtures().join("photos/jpeg").join(name)).unwrap()).unwrap();
        assert_eq!(img.dimensions(), size(&r["size"]), "{name}");
        if sha(img.as_raw()) != r["rgb_sha256"] {
            wrong.push(format!("{name}: decoded pixels"));
        }
        let (w, h) = size(&r["clip_size"]);
        if sha(resize_bicubic_like_pil(&img, w, h).as_raw()) != r["clip_resized_sha256"] {
            wrong.push(format!("{name}: resized to {w}×{h}"));
        }
    }
    assert_eq!(refs["files"].as_object().unwrap().len(), 3);
    assert!(wrong.is_empty(), "not Pillow's bytes: {wrong:?}");
}
