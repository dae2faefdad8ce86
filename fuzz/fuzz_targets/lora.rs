//! LoRA files: bytes → `Lora::from_bytes` (kohya-ss or diffusers/PEFT keys, PEFT metadata) →
//! `check_fits` (SD 1.5's and SDXL's configs) → `Merges::resolve` against a small model's keys
//! for each network (diffusers names, SGM names through the single-file mapping, a fused
//! `in_proj`) → `apply` on every weight it merges. Any `Err` is fine; a panic is a bug.
#![no_main]

use std::collections::HashMap;
use std::rc::Rc;

use edict_sd::checkpoint::lora::{Lora, Merges};
use edict_sd::checkpoint::single_file::{Layout, Part};
use edict_sd::config::SdConfigs;
use libfuzzer_sys::fuzz_target;

const LAYOUT: Layout = Layout { unet_layers_per_block: 2, vae_blocks: 4, text_layers: 1, text_2_layers: 1 };

/// The weights of a small model, by network (the seeds in `corpus/lora` adapt some of them).
fn shapes(part: Part) -> HashMap<String, Vec<usize>> {
    let keys: &[(&str, &[usize])] = match part {
        Part::Unet => &[
            ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", &[8, 4]),
            ("down_blocks.0.resnets.0.conv1.weight", &[8, 8, 3, 3]),
            ("down_blocks.0.resnets.0.time_emb_proj.weight", &[8, 16]),
            ("mid_block.attentions.0.proj_in.weight", &[8, 8, 1, 1]),
        ],
        Part::TextEncoder => &[("text_model.encoder.layers.0.self_attn.q_proj.weight", &[4, 4])],
        Part::TextEncoder2 => &[("text_model.encoder.layers.0.self_attn.in_proj.weight", &[12, 4])],
        Part::Vae => &[("encoder.conv_in.weight", &[8, 3, 3, 3])],
    };
    keys.iter().map(|(k, s)| (k.to_string(), s.to_vec())).collect()
}

thread_local! {
    static CONFIGS: [SdConfigs; 2] = [SdConfigs::sd15(), SdConfigs::sdxl()];
}

fuzz_target!(|data: &[u8]| {
    let Ok(lora) = Lora::from_bytes("fuzz.safetensors", data, 0.5) else {
        return;
    };
    CONFIGS.with(|configs| configs.iter().for_each(|c| drop(lora.check_fits(c))));
    let loras = [Rc::new(lora)];
    for part in Part::ALL {
        let shapes = shapes(part);
        let Ok(merges) = Merges::resolve(&loras, part, LAYOUT, &shapes) else {
            continue;
        };
        for key in merges.keys() {
            let mut values = vec![0.0; shapes[key].iter().product()];
            merges.apply(key, &mut values);
        }
    }
});
