//! The published key mapping from original single-file SD checkpoints (CompVis/LDM for SD 1.x
//! and 2.x, Stability's SGM for SDXL) to diffusers/transformers keys, so one `.safetensors` file
//! loads without conversion.

/// Which network a mapped key (or a model file) belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    TextEncoder,
    Unet,
    Vae,
    /// SDXL's second text encoder (OpenCLIP ViT-bigG, projected).
    TextEncoder2,
}

impl Part {
    /// Every network a model may have; SD 1.x and 2.x have the first three.
    pub const ALL: [Part; 4] = [Part::TextEncoder, Part::Unet, Part::Vae, Part::TextEncoder2];

    /// Its folder in a diffusers model.
    pub fn folder(self) -> &'static str {
        match self {
            Part::TextEncoder => "text_encoder",
            Part::Unet => "unet",
            Part::Vae => "vae",
            Part::TextEncoder2 => "text_encoder_2",
        }
    }
}

/// Block layout the mapping depends on: LDM numbers UNet blocks flat and the VAE decoder's
/// up blocks in reverse.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub unet_layers_per_block: usize,
    pub vae_blocks: usize,
    /// SD 2.x uses the first 23 of OpenCLIP's 24 text layers; the file holds all of them.
    pub text_layers: usize,
    /// SDXL's second text encoder: all of its layers (its pooled state is read after the last).
    pub text_2_layers: usize,
}

/// True when the keys look like an original SD checkpoint.
pub fn is_single_file<'a>(mut keys: impl Iterator<Item = &'a str>) -> bool {
    keys.any(|k| k.starts_with("model.diffusion_model."))
}

/// True when an original checkpoint's text encoder is OpenCLIP's (SD 2.x), not OpenAI CLIP's.
pub fn is_sd2<'a>(mut keys: impl Iterator<Item = &'a str>) -> bool {
    keys.any(|k| k.starts_with(OPEN_CLIP))
}

/// True when a single file is SGM's SDXL layout (two text encoders under `conditioner.`).
pub fn is_sdxl<'a>(mut keys: impl Iterator<Item = &'a str>) -> bool {
    keys.any(|k| k.starts_with(SDXL_OPEN_CLIP))
}

const OPEN_CLIP: &str = "cond_stage_model.model.";
const SDXL_CLIP: &str = "conditioner.embedders.0.transformer.";
const SDXL_OPEN_CLIP: &str = "conditioner.embedders.1.model.";

/// Maps one original key to `(part, diffusers key)`; `None` for keys no network uses
/// (EMA copies, `position_ids`, loss buffers, …).
pub fn map_key(key: &str, layout: Layout) -> Option<(Part, String)> {
    if let Some(rest) = key.strip_prefix("model.diffusion_model.") {
        return map_unet(rest, layout.unet_layers_per_block).map(|k| (Part::Unet, k));
    }
    if let Some(rest) = key.strip_prefix("first_stage_model.") {
        return map_vae(rest, layout.vae_blocks).map(|k| (Part::Vae, k));
    }
    if let Some(rest) = key.strip_prefix(OPEN_CLIP) {
        return map_open_clip(rest, layout.text_layers, false).map(|k| (Part::TextEncoder, k));
    }
    if let Some(rest) = key.strip_prefix(SDXL_OPEN_CLIP) {
        return map_open_clip(rest, layout.text_2_layers, true).map(|k| (Part::TextEncoder2, k));
    }
    if let Some(rest) = key.strip_prefix("cond_stage_model.transformer.").or_else(|| key.strip_prefix(SDXL_CLIP)) {
        if rest.ends_with("position_ids") {
            return None;
        }
        let rest = rest.strip_prefix("text_model.").unwrap_or(rest);
        return Some((Part::TextEncoder, format!("text_model.{rest}")));
    }
    None
}

/// OpenCLIP's text tower (SD 2.x, SDXL's second) to transformers names; q, k and v stay fused
/// as `self_attn.in_proj` (the text encoder splits them). `text_projection` keeps its name
/// (`[hidden, projection]`, read as such) when `projection` is wanted; it, `logit_scale` and
/// layers past the ones used map to nothing otherwise.
fn map_open_clip(k: &str, layers: usize, projection: bool) -> Option<String> {
    if k == "text_projection" {
        return projection.then(|| k.to_string());
    }
    map_open_clip_tower(k, layers).map(|k| format!("text_model.{k}"))
}

fn map_open_clip_tower(k: &str, layers: usize) -> Option<String> {
    let direct = [
        ("token_embedding.weight", "embeddings.token_embedding.weight"),
        ("positional_embedding", "embeddings.position_embedding.weight"),
        ("ln_final.weight", "final_layer_norm.weight"),
        ("ln_final.bias", "final_layer_norm.bias"),
    ];
    if let Some((_, to)) = direct.iter().find(|(from, _)| *from == k) {
        return Some(to.to_string());
    }
    let (i, rest) = split_index(k.strip_prefix("transformer.resblocks.")?)?;
    if i >= layers {
        return None;
    }
    let parts = [
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
        ("attn.out_proj.", "self_attn.out_proj."),
        ("attn.in_proj_", "self_attn.in_proj."),
    ];
    let (from, to) = parts.iter().find(|(from, _)| rest.starts_with(from))?;
    Some(format!("encoder.layers.{i}.{to}{}", &rest[from.len()..]))
}

fn split_index(s: &str) -> Option<(usize, &str)> {
    let (i, rest) = s.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

fn map_resnet(rest: &str) -> String {
    let r = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
        ("nin_shortcut.", "conv_shortcut."),
    ];
    for (from, to) in r {
        if let Some(tail) = rest.strip_prefix(from) {
            return format!("{to}{tail}");
        }
    }
    rest.to_string()
}

/// One SGM/LDM UNet key (after `model.diffusion_model.`) to its diffusers key.
pub(crate) fn map_unet(k: &str, layers: usize) -> Option<String> {
    let direct = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        // SDXL's size and pooled-text embedding
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ];
    for (from, to) in direct {
        if let Some(tail) = k.strip_prefix(from) {
            return Some(format!("{to}{tail}"));
        }
    }
    if let Some(rest) = k.strip_prefix("input_blocks.") {
        let (i, rest) = split_index(rest)?;
        let (sub, rest) = split_index(rest)?;
        let i = i.checked_sub(1)?;
        let (block, layer) = (i / (layers + 1), i % (layers + 1));
        let base = format!("down_blocks.{block}");
        return Some(match (layer == layers, sub) {
            (true, 0) => format!("{base}.downsamplers.0.conv.{}", rest.strip_prefix("op.")?),
            (false, 0) => format!("{base}.resnets.{layer}.{}", map_resnet(rest)),
            (false, 1) => format!("{base}.attentions.{layer}.{rest}"),
            _ => return None,
        });
    }
    if let Some(rest) = k.strip_prefix("middle_block.") {
        let (sub, rest) = split_index(rest)?;
        return Some(match sub {
            0 => format!("mid_block.resnets.0.{}", map_resnet(rest)),
            1 => format!("mid_block.attentions.0.{rest}"),
            2 => format!("mid_block.resnets.1.{}", map_resnet(rest)),
            _ => return None,
        });
    }
    if let Some(rest) = k.strip_prefix("output_blocks.") {
        let (i, rest) = split_index(rest)?;
        let (sub, rest) = split_index(rest)?;
        let (block, layer) = (i / (layers + 1), i % (layers + 1));
        let base = format!("up_blocks.{block}");
        return Some(match sub {
            0 => format!("{base}.resnets.{layer}.{}", map_resnet(rest)),
            // the upsampler is the last child: `.1.conv` without attention, `.2.conv` with it
            _ if rest.starts_with("conv.") => format!("{base}.upsamplers.0.{rest}"),
            1 => format!("{base}.attentions.{layer}.{rest}"),
            _ => return None,
        });
    }
    None
}

fn map_vae_attention(rest: &str) -> String {
    let r = [
        ("norm.", "group_norm."),
        ("q.", "to_q."),
        ("k.", "to_k."),
        ("v.", "to_v."),
        ("proj_out.", "to_out.0."),
    ];
    for (from, to) in r {
        if let Some(tail) = rest.strip_prefix(from) {
            return format!("{to}{tail}");
        }
    }
    rest.to_string()
}

fn map_vae_mid(rest: &str) -> Option<String> {
    Some(if let Some(t) = rest.strip_prefix("block_1.") {
        format!("mid_block.resnets.0.{}", map_resnet(t))
    } else if let Some(t) = rest.strip_prefix("block_2.") {
        format!("mid_block.resnets.1.{}", map_resnet(t))
    } else {
        format!("mid_block.attentions.0.{}", map_vae_attention(rest.strip_prefix("attn_1.")?))
    })
}

fn map_vae(k: &str, blocks: usize) -> Option<String> {
    for coder in ["encoder", "decoder"] {
        let Some(rest) = k.strip_prefix(coder).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        let mapped = if let Some(t) = rest.strip_prefix("norm_out.") {
            format!("conv_norm_out.{t}")
        } else if let Some(t) = rest.strip_prefix("mid.") {
            map_vae_mid(t)?
        } else if let Some(t) = rest.strip_prefix("down.") {
            let (i, t) = split_index(t)?;
            if let Some(t) = t.strip_prefix("block.") {
                let (j, t) = split_index(t)?;
                format!("down_blocks.{i}.resnets.{j}.{}", map_resnet(t))
            } else {
                format!("down_blocks.{i}.downsamplers.0.{}", t.strip_prefix("downsample.")?)
            }
        } else if let Some(t) = rest.strip_prefix("up.") {
            let (i, t) = split_index(t)?;
            let i = blocks.checked_sub(1 + i)?;
            if let Some(t) = t.strip_prefix("block.") {
                let (j, t) = split_index(t)?;
                format!("up_blocks.{i}.resnets.{j}.{}", map_resnet(t))
            } else {
                format!("up_blocks.{i}.upsamplers.0.{}", t.strip_prefix("upsample.")?)
            }
        } else {
            rest.to_string()
        };
        return Some(format!("{coder}.{mapped}"));
    }
    Some(k.to_string())
}

/// Old diffusers VAE folders name the attention `query/key/value/proj_attn`.
pub fn map_legacy_vae_key(key: &str) -> String {
    let r = [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ];
    for (from, to) in r {
        if key.contains(from) {
            return key.replacen(from, to, 1);
        }
    }
    key.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD: Layout = Layout {
        unet_layers_per_block: 2,
        vae_blocks: 4,
        text_layers: 23,
        text_2_layers: 32,
    };

    fn m(k: &str) -> String {
        map_key(k, SD).map(|(_, k)| k).unwrap_or_default()
    }

    #[test]
    fn unet_keys_follow_the_published_mapping() {
        assert_eq!(m("model.diffusion_model.input_blocks.1.0.in_layers.0.weight"), "down_blocks.0.resnets.0.norm1.weight");
        assert_eq!(m("model.diffusion_model.input_blocks.2.1.proj_in.weight"), "down_blocks.0.attentions.1.proj_in.weight");
        assert_eq!(m("model.diffusion_model.input_blocks.3.0.op.weight"), "down_blocks.0.downsamplers.0.conv.weight");
        assert_eq!(m("model.diffusion_model.input_blocks.11.0.skip_connection.bias"), "down_blocks.3.resnets.1.conv_shortcut.bias");
        assert_eq!(m("model.diffusion_model.middle_block.2.emb_layers.1.weight"), "mid_block.resnets.1.time_emb_proj.weight");
        assert_eq!(m("model.diffusion_model.output_blocks.2.1.conv.weight"), "up_blocks.0.upsamplers.0.conv.weight");
        assert_eq!(m("model.diffusion_model.output_blocks.5.2.conv.bias"), "up_blocks.1.upsamplers.0.conv.bias");
        assert_eq!(
            m("model.diffusion_model.output_blocks.5.1.transformer_blocks.0.attn2.to_k.weight"),
            "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k.weight"
        );
        assert_eq!(m("model.diffusion_model.out.2.bias"), "conv_out.bias");
    }

    #[test]
    fn vae_and_text_keys_follow_the_published_mapping() {
        assert_eq!(m("first_stage_model.decoder.up.3.block.0.nin_shortcut.weight"), "decoder.up_blocks.0.resnets.0.conv_shortcut.weight");
        assert_eq!(m("first_stage_model.decoder.up.1.upsample.conv.weight"), "decoder.up_blocks.2.upsamplers.0.conv.weight");
        assert_eq!(m("first_stage_model.encoder.mid.attn_1.proj_out.bias"), "encoder.mid_block.attentions.0.to_out.0.bias");
        assert_eq!(m("first_stage_model.encoder.down.0.downsample.conv.bias"), "encoder.down_blocks.0.downsamplers.0.conv.bias");
        assert_eq!(m("first_stage_model.quant_conv.weight"), "quant_conv.weight");
        assert_eq!(
            m("cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"),
            "text_model.encoder.layers.0.mlp.fc1.weight"
        );
        assert_eq!(map_key("cond_stage_model.transformer.text_model.embeddings.position_ids", SD), None);
        assert_eq!(map_key("model_ema.decay", SD), None);
        // SD 2.x: OpenCLIP's text tower, 23 of its 24 layers
        assert_eq!(m("cond_stage_model.model.positional_embedding"), "text_model.embeddings.position_embedding.weight");
        assert_eq!(
            m("cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight"),
            "text_model.encoder.layers.22.self_attn.in_proj.weight"
        );
        assert_eq!(m("cond_stage_model.model.transformer.resblocks.0.mlp.c_proj.bias"), "text_model.encoder.layers.0.mlp.fc2.bias");
        assert_eq!(map_key("cond_stage_model.model.transformer.resblocks.23.ln_1.weight", SD), None);
        assert_eq!(map_key("cond_stage_model.model.text_projection", SD), None);
        assert!(is_sd2(["cond_stage_model.model.ln_final.bias"].into_iter()));
        assert_eq!(map_legacy_vae_key("encoder.mid_block.attentions.0.query.weight"), "encoder.mid_block.attentions.0.to_q.weight");
    }

    /// SGM's SDXL layout: the first text encoder in transformers' names, the second in
    /// OpenCLIP's with every layer and its projection kept, the UNet's `label_emb`.
    #[test]
    fn sdxl_keys_follow_the_published_mapping() {
        let part = |k: &str| map_key(k, SD).map(|(p, _)| p);
        assert_eq!(m("conditioner.embedders.0.transformer.text_model.final_layer_norm.bias"), "text_model.final_layer_norm.bias");
        assert_eq!(part("conditioner.embedders.0.transformer.text_model.final_layer_norm.bias"), Some(Part::TextEncoder));
        assert_eq!(map_key("conditioner.embedders.0.transformer.text_model.embeddings.position_ids", SD), None);
        let k = "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_bias";
        assert_eq!((m(k), part(k)), ("text_model.encoder.layers.31.self_attn.in_proj.bias".into(), Some(Part::TextEncoder2)));
        assert_eq!(m("conditioner.embedders.1.model.text_projection"), "text_projection");
        assert_eq!(m("conditioner.embedders.1.model.ln_final.weight"), "text_model.final_layer_norm.weight");
        assert_eq!(map_key("conditioner.embedders.1.model.logit_scale", SD), None);
        assert_eq!(m("model.diffusion_model.label_emb.0.2.weight"), "add_embedding.linear_2.weight");
        // SDXL's first up block has attention: its upsampler is the third child
        assert_eq!(m("model.diffusion_model.output_blocks.2.2.conv.weight"), "up_blocks.0.upsamplers.0.conv.weight");
        assert!(is_sdxl(["conditioner.embedders.1.model.ln_final.bias"].into_iter()));
        assert!(!is_sdxl(["cond_stage_model.model.ln_final.bias"].into_iter()));
    }
}
