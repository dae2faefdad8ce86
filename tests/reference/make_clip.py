#!/usr/bin/env python3
"""CLIP-score fixtures: a tiny seeded transformers `CLIPModel` and torchmetrics references.

Writes (deterministically, offline):

  tests/fixtures/tiny-clip/             config.json, model.safetensors (f16), preprocessor_config.json,
                                        tokenizer files (copied from tiny-sd/tokenizer: the real CLIP BPE)
  tests/fixtures/reference/clip.safetensors, clip.json
                                        pixel_values of CLIPImageProcessor, image/text embeddings, and
                                        CLIP scores from torchmetrics' `clip_score`

Run after make_fixtures.py (it reuses its weight initialisation and determinism settings):
    tests/reference/.venv/bin/python tests/reference/make_clip.py
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (also sets determinism: 1 thread, deterministic algorithms)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchmetrics  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from torchmetrics.functional.multimodal import clip_score  # noqa: E402
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor  # noqa: E402

OUT = mf.FIX / "tiny-clip"
PHOTOS = mf.FIX / "photos"

# openai/clip-vit-large-patch14's preprocessor_config.json, verbatim except the two sizes (224 → 32):
# the same old-style integer `size`/`crop_size` (shortest edge / square crop) and PIL bicubic.
PREPROCESSOR = {
    "crop_size": 32,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 32,
}

# Each photo (64×64) is cropped (PIL box: left, top, right, bottom) so that preprocessing sees a
# square downscale, a non-square downscale (then a centre crop), and a portrait upscale.
IMAGES = [
    {"file": "chelsea.png", "box": [0, 0, 64, 64]},
    {"file": "astronaut.png", "box": [0, 12, 64, 52]},
    {"file": "coffee.png", "box": [20, 10, 40, 38]},
]
PROMPTS = [
    "a photo of a tabby cat",
    "a portrait photo of a smiling astronaut in an orange suit in front of a flag",
    "a cup of coffee on a saucer with a spoon",
    "",
]


def make_model() -> CLIPModel:
    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            # openai/clip-vit-large-patch14's legacy ids: eos_token_id 2 makes transformers pool at
            # argmax(input_ids) (= the first <|endoftext|>, 49407, the largest id)
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            hidden_act="quick_gelu",
        ),
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    # tag chosen (among clip-0…11) so that the score matrix has both signs, i.e. both sides of the
    # clamp; random towers give every image a similar embedding, so most tags give one sign only
    mf.randomize(model, "clip-2")
    with torch.no_grad():
        model.logit_scale.fill_(float(torch.tensor(math.log(1 / 0.07)).half()))
    return model


def photo(entry) -> np.ndarray:
    im = Image.open(PHOTOS / entry["file"]).convert("RGB").crop(tuple(entry["box"]))
    return np.asarray(im)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    model = make_model()
    # f16 on disk (lossless: the weights are f16-representable) keeps the 49408-row token table small
    model.half().save_pretrained(OUT, safe_serialization=True)
    (OUT / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2) + "\n")
    for f in (mf.MODEL / "tokenizer").iterdir():
        shutil.copy(f, OUT / f.name)

    # Load the folder back the way torchmetrics does (`CLIPModel/CLIPProcessor.from_pretrained`).
    model = CLIPModel.from_pretrained(OUT).eval()
    assert model.dtype == torch.float32
    for k, v in make_model().state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    processor = CLIPProcessor.from_pretrained(OUT)
    # transformers 4.57 picks the slow (PIL) processor when `use_fast` is unset; 5.x picks the
    # torchvision one, which resizes differently.
    assert type(processor.image_processor) is CLIPImageProcessor, type(processor.image_processor)

    arrays = [photo(e) for e in IMAGES]
    # PIE-Bench feeds torchmetrics uint8 [3, H, W] tensors (torch.tensor(np.array(img)).permute(2, 0, 1))
    tensors = [torch.from_numpy(a.copy()).permute(2, 0, 1) for a in arrays]
    model_and_processor = lambda: (model, processor)  # noqa: E731  (torchmetrics only accepts hub names or a callable)

    out = {}
    meta = {"images": [], "prompts": [], "scores": []}
    with torch.no_grad():
        for i, (e, a, t) in enumerate(zip(IMAGES, arrays, tensors)):
            pv = processor(images=[t], return_tensors="pt")["pixel_values"]
            pv_pil = processor(images=[Image.fromarray(a)], return_tensors="pt")["pixel_values"]
            assert torch.equal(pv, pv_pil), "tensor and PIL inputs preprocess differently"
            out[f"pixel_values_{i}"] = pv
            out[f"image_embeds_{i}"] = model.get_image_features(pv)
            mf.stats(f"image_embeds_{i}", out[f"image_embeds_{i}"])
            meta["images"].append({**e, "size": list(a.shape[1::-1])})
        for j, p in enumerate(PROMPTS):
            # as torchmetrics: padding=True (a single prompt is not padded), attention mask passed
            tok = processor(text=[p], return_tensors="pt", padding=True)
            out[f"ids_{j}"] = tok["input_ids"]
            out[f"text_embeds_{j}"] = model.get_text_features(tok["input_ids"], tok["attention_mask"])
            mf.stats(f"text_embeds_{j}", out[f"text_embeds_{j}"])
            meta["prompts"].append(p)
        scores = torch.zeros(len(IMAGES), len(PROMPTS), dtype=torch.float64)
        cosines = torch.zeros_like(scores)
        for i, t in enumerate(tensors):
            for j, p in enumerate(PROMPTS):
                scores[i, j] = float(clip_score(t, p, model_and_processor))
                a, b = out[f"image_embeds_{i}"][0].double(), out[f"text_embeds_{j}"][0].double()
                cosines[i, j] = (a @ b) / (a.norm() * b.norm())
                # the formula, 100·max(cos, 0), up to torchmetrics' f32 arithmetic
                assert abs(scores[i, j] - 100 * max(float(cosines[i, j]), 0.0)) < 1e-4
    out["scores"] = scores
    out["cosines"] = cosines
    assert (cosines > 0.05).sum() >= 3 and (cosines < -0.05).sum() >= 2, f"want both signs:\n{cosines}"
    meta["scores"] = scores.tolist()
    meta["cosines"] = cosines.tolist()
    meta["versions"] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torchmetrics": torchmetrics.__version__,
        "pillow": Image.__version__,
    }
    mf.save(out, mf.REF / "clip.safetensors")
    (mf.REF / "clip.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    mf.log("scores (images × prompts):\n", scores)
    for f in sorted(OUT.iterdir()) + [mf.REF / "clip.safetensors", mf.REF / "clip.json"]:
        mf.log(f"  {f.relative_to(mf.FIX)}: {f.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
