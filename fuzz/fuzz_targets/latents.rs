//! The latents file (`edict invert` output, safetensors with metadata): any bytes are read
//! into an inversion or refused with an error; whatever is accepted writes back and reads
//! again to the same thing. A panic is a bug.
#![no_main]

use edict_pipeline::io::latents::{from_bytes, to_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((inv, model)) = from_bytes(data, "fuzz.latents") else {
        return;
    };
    let n: usize = inv.latent.shape.iter().product();
    assert_eq!(inv.latent.values.len(), n);
    assert_eq!(inv.pair.x.len(), n);
    assert_eq!(inv.pair.y.len(), n);
    let bytes = to_bytes(&inv, &model).expect("an accepted inversion must serialise");
    let (back, model_back) = from_bytes(&bytes, "round trip").expect("round trip");
    assert_eq!(model, model_back);
    assert_eq!(back.latent, inv.latent);
    assert_eq!(back.pair, inv.pair);
    assert_eq!(back.prompt, inv.prompt);
    assert_eq!(back.settings, inv.settings);
});
