//! PIE-Bench's `mapping_file.json` (the input, read as UTF-8 with replacement characters)
//! through `pie_bench::parse_mapping`, and every accepted entry's run-length mask through
//! `Mask::decode` and `resized`, as `edict eval-edit` reads them. Any `Err` is fine; a panic is
//! a bug; an accepted image path never leaves `annotation_images/`.
#![no_main]

use std::path::{Component, Path};

use edict_pipeline::eval::pie_bench::{Mask, SIDE, parse_mapping};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = parse_mapping(&String::from_utf8_lossy(data)) else {
        return;
    };
    for e in entries {
        assert!(
            Path::new(&e.image_path).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
            "{:?} leaves the folder",
            e.image_path
        );
        if let Ok(m) = Mask::decode(&e.mask) {
            assert_eq!(m.data.len(), SIDE * SIDE);
            assert_eq!(m.resized(64).data.len(), 64 * 64);
        }
    }
});
