//! Photos users actually have: JPEG variants from the fuzz seed corpus (made by
//! fuzz/scripts/make_seeds.py with Pillow).

use edict_pipeline::io::image_io::decode;

fn seed(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/fuzz/corpus/image/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
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
    let err = decode(&jpg[..jpg.len() / 2]).unwrap_err().to_string();
    assert!(err.starts_with("image:"), "{err}");
}
