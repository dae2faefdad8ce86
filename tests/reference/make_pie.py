#!/usr/bin/env python3
"""PIE-Bench fixtures: a 3-image PIE-Bench-style folder and the benchmark's metrics on it.

Writes (deterministically, offline):

  tests/fixtures/pie-bench/mapping_file.json           3 entries in PIE-Bench's format
  tests/fixtures/pie-bench/annotation_images/…/*.png   the 512×512 source images
  tests/fixtures/pie-bench/edited/…/*.png              a fixed "edited" image per source
  tests/fixtures/reference/pie.json                    decoded masks and the benchmark's numbers
                                                       for each (source, edited) pair

The numbers come from cure-lab/PnPInversion's evaluation code path (evaluation/evaluate.py and
evaluation/matrics_calculator.py, mirrored below function by function): torchmetrics 1.9.0's
PeakSignalNoiseRatio / MeanSquaredError / StructuralSimilarityIndexMeasure (data_range 1.0) on
images in [0, 1] multiplied by 1 − mask, and CLIPScore once per image on a uint8 [3, H, W] tensor
(after `np.uint8(img * mask)` for the edited part), here with the tiny CLIP of make_clip.py.

Run after make_clip.py:
    tests/reference/.venv/bin/python tests/reference/make_pie.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (also sets determinism: 1 thread, deterministic algorithms)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchmetrics  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure  # noqa: E402
from torchmetrics.multimodal import CLIPScore  # noqa: E402
from torchmetrics.regression import MeanSquaredError  # noqa: E402
from transformers import CLIPModel, CLIPProcessor  # noqa: E402

OUT = mf.FIX / "pie-bench"
PHOTOS = mf.FIX / "photos"
SIDE = 512
N = SIDE * SIDE


def rectangle_runs(top, bottom, left, right):
    return [v for y in range(top, bottom) for v in (y * SIDE + left, right - left)]


def disc_runs(cy, cx, r):
    runs = []
    for y in range(cy - r, cy + r + 1):
        half = int((r * r - (y - cy) ** 2) ** 0.5)
        runs += [y * SIDE + cx - half, 2 * half + 1]
    return runs


# Ids, paths and prompts in PIE-Bench's style (edited words bracketed). Masks: a rectangle (with
# one run overlapping another), a disc plus a run clipped at the end of the image, a run starting
# past the end (mask_decode skips it) and an empty run; and the whole image (no unedited part:
# the background metrics are "nan"). Target prompts chosen so the random tiny CLIP scores the
# edited images above 0 except once (its clamp), and the whole image and the edited part apart.
ENTRIES = [
    {
        "id": "000000000000",
        "photo": "chelsea.png",
        "insert": "coffee.png",
        "image_path": "0_random_140/000000000000.png",
        "original_prompt": "a photo of a [tabby cat]",
        "editing_prompt": "[an astronaut]",
        "editing_instruction": "Turn the cat into an astronaut",
        "editing_type_id": "0",
        "blended_word": "cat astronaut",
        "mask": rectangle_runs(160, 352, 128, 384) + [170 * SIDE + 100, 60],
    },
    {
        "id": "000000000001",
        "photo": "astronaut.png",
        "insert": "chelsea.png",
        "image_path": "1_change_object_80/000000000001.png",
        "original_prompt": "a portrait photo of a smiling [astronaut] in an orange suit",
        "editing_prompt": "a photo of a [bird on a branch]",
        "editing_instruction": "Make the astronaut a bird on a branch",
        "editing_type_id": "1",
        "blended_word": "astronaut bird",
        "mask": disc_runs(200, 256, 90) + [N - 1144, 5000, N + 56, 10, 1000, 0],
    },
    {
        "id": "000000000002",
        "photo": "coffee.png",
        "insert": "astronaut.png",
        "image_path": "2_add_object_80/000000000002.png",
        "original_prompt": "a cup of coffee on a saucer",
        "editing_prompt": "a [bowl of fruit]",
        "editing_instruction": "Make it a bowl of fruit",
        "editing_type_id": "2",
        "blended_word": "",
        "mask": [0, N],
    },
]


def mask_decode(encoded_mask, image_shape=[512, 512]):
    """PnPInversion evaluation/evaluate.py, verbatim."""
    length = image_shape[0] * image_shape[1]
    mask_array = np.zeros((length,))

    for i in range(0, len(encoded_mask), 2):
        splice_len = min(encoded_mask[i + 1], length - encoded_mask[i])
        for j in range(splice_len):
            mask_array[encoded_mask[i] + j] = 1

    mask_array = mask_array.reshape(image_shape[0], image_shape[1])
    # to avoid annotation errors in boundary
    mask_array[0, :] = 1
    mask_array[-1, :] = 1
    mask_array[:, 0] = 1
    mask_array[:, -1] = 1

    return mask_array


def runs_of(mask):
    """Canonical (start, length) runs of a 0/1 array, row-major: how pie.json stores decoded masks."""
    flat = np.concatenate([[0], mask.reshape(-1).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    return [int(v) for s, e in zip(edges[::2], edges[1::2]) for v in (s, e - s)]


def source_image(entry) -> np.ndarray:
    """The 64² photo upscaled 8× by repetition: blocky, so the PNG stays small."""
    a = np.asarray(Image.open(PHOTOS / entry["photo"]).convert("RGB"))
    return a.repeat(8, axis=0).repeat(8, axis=1)


def edited_image(entry, source: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
    """Another photo inside the mask; outside it, the source brightened on a band, ±levels on
    8×8 blocks, and per-pixel noise along the borders (where SSIM's reflect padding acts)."""
    rng = np.random.default_rng(seed)
    insert = np.asarray(Image.open(PHOTOS / entry["insert"]).convert("RGB")).repeat(8, 0).repeat(8, 1)
    img = source.astype(np.int32)
    img[200:260] += 9
    img += rng.integers(-6, 7, size=(64, 64, 3)).repeat(8, 0).repeat(8, 1)
    border = np.zeros((SIDE, SIDE), bool)
    border[:14], border[-14:], border[:, :14], border[:, -14:] = True, True, True, True
    img[border] += rng.integers(-20, 21, size=(int(border.sum()), 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    m = mask[:, :, None] == 1
    return np.where(m, insert, img)


class Metrics:
    """PnPInversion evaluation/matrics_calculator.py `MetricsCalculator`, the metrics it can
    compute here (LPIPS and the DINO structure distance need their networks)."""

    def __init__(self, clip_model, clip_processor):
        self.clip_metric_calculator = CLIPScore(model_name_or_path=lambda: (clip_model, clip_processor))
        self.psnr_metric_calculator = PeakSignalNoiseRatio(data_range=1.0)
        self.mse_metric_calculator = MeanSquaredError()
        self.ssim_metric_calculator = StructuralSimilarityIndexMeasure(data_range=1.0)

    def calculate_clip_similarity(self, img, txt, mask=None):
        img = np.array(img)
        if mask is not None:
            mask = np.array(mask)
            img = np.uint8(img * mask)
        img_tensor = torch.tensor(img).permute(2, 0, 1)
        return self.clip_metric_calculator(img_tensor, txt).cpu().item()

    @staticmethod
    def _masked(img_pred, img_gt, mask_pred, mask_gt):
        img_pred = np.array(img_pred).astype(np.float32) / 255
        img_gt = np.array(img_gt).astype(np.float32) / 255
        assert img_pred.shape == img_gt.shape, "Image shapes should be the same."
        if mask_pred is not None:
            img_pred = img_pred * np.array(mask_pred).astype(np.float32)
        if mask_gt is not None:
            img_gt = img_gt * np.array(mask_gt).astype(np.float32)
        return torch.tensor(img_pred).permute(2, 0, 1), torch.tensor(img_gt).permute(2, 0, 1)

    def calculate_psnr(self, img_pred, img_gt, mask_pred=None, mask_gt=None):
        p, g = self._masked(img_pred, img_gt, mask_pred, mask_gt)
        return self.psnr_metric_calculator(p.unsqueeze(0), g.unsqueeze(0)).cpu().item()

    def calculate_mse(self, img_pred, img_gt, mask_pred=None, mask_gt=None):
        p, g = self._masked(img_pred, img_gt, mask_pred, mask_gt)
        return self.mse_metric_calculator(p.contiguous(), g.contiguous()).cpu().item()

    def calculate_ssim(self, img_pred, img_gt, mask_pred=None, mask_gt=None):
        p, g = self._masked(img_pred, img_gt, mask_pred, mask_gt)
        return self.ssim_metric_calculator(p.unsqueeze(0), g.unsqueeze(0)).cpu().item()


def ssim_valid(p: torch.Tensor, g: torch.Tensor) -> float:
    """SSIM averaged over the windows inside the image only, as torchmetrics did before
    Lightning-AI/torchmetrics#2721 (1.5, 2024) and the published PIE-Bench numbers: informational."""
    p, g = p.double().unsqueeze(0), g.double().unsqueeze(0)
    d = torch.arange(-5, 6, dtype=torch.float64)
    k = torch.exp(-((d / 1.5) ** 2) / 2)
    k = k / k.sum()
    kernel = (k[:, None] * k[None, :]).expand(3, 1, 11, 11)
    blur = lambda x: F.conv2d(x, kernel, groups=3)  # noqa: E731
    mp, mg = blur(p), blur(g)
    vp, vg, cpg = blur(p * p) - mp**2, blur(g * g) - mg**2, blur(p * g) - mp * mg
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mp * mg + c1) * (2 * cpg + c2)) / ((mp**2 + mg**2 + c1) * (vp + vg + c2))
    return float(s.mean())


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    clip_dir = mf.FIX / "tiny-clip"
    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(clip_dir)
    metrics = Metrics(model, processor)

    mapping, ref = {}, {"entries": []}
    for k, e in enumerate(ENTRIES):
        mapping[e["id"]] = {key: e[key] for key in ("image_path", "original_prompt", "editing_prompt", "editing_instruction", "editing_type_id", "blended_word", "mask")}
        mask = mask_decode(e["mask"])
        source = source_image(e)
        edited = edited_image(e, source, mask, seed=k)
        for folder, img in (("annotation_images", source), ("edited", edited)):
            path = OUT / folder / e["image_path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path, optimize=True)

        # evaluate.py: the prompts without brackets, the mask repeated over RGB, images read back
        original_prompt = e["original_prompt"].replace("[", "").replace("]", "")
        editing_prompt = e["editing_prompt"].replace("[", "").replace("]", "")
        mask3 = mask[:, :, np.newaxis].repeat([3], axis=2)
        src_image = Image.open(OUT / "annotation_images" / e["image_path"])
        tgt_image = Image.open(OUT / "edited" / e["image_path"])
        assert np.array_equal(np.array(src_image), source) and np.array_equal(np.array(tgt_image), edited)
        r = {
            "id": e["id"],
            "source_prompt": original_prompt,
            "target_prompt": editing_prompt,
            "mask_runs": runs_of(mask),
            "mask_sum": int(mask.sum()),
        }
        with torch.no_grad():
            if (1 - mask3).sum() == 0:
                r.update(psnr="nan", mse="nan", ssim="nan", ssim_valid="nan")
            else:
                # evaluate.py's calculate_metric(…, src_image, tgt_image, mask, mask, …)
                r["psnr"] = metrics.calculate_psnr(src_image, tgt_image, 1 - mask3, 1 - mask3)
                r["mse"] = metrics.calculate_mse(src_image, tgt_image, 1 - mask3, 1 - mask3)
                r["ssim"] = metrics.calculate_ssim(src_image, tgt_image, 1 - mask3, 1 - mask3)
                r["ssim_valid"] = ssim_valid(*Metrics._masked(src_image, tgt_image, 1 - mask3, 1 - mask3))
            r["clip_whole"] = metrics.calculate_clip_similarity(tgt_image, editing_prompt, None)
            r["clip_edited"] = metrics.calculate_clip_similarity(tgt_image, editing_prompt, mask3) if mask3.sum() > 0 else "nan"
        ref["entries"].append(r)
        mf.log(e["id"], {k: v for k, v in r.items() if k != "mask_runs"})

    (OUT / "mapping_file.json").write_text(json.dumps(mapping) + "\n")
    ref["versions"] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torchmetrics": torchmetrics.__version__,
        "numpy": np.__version__,
        "pillow": Image.__version__,
    }
    (mf.REF / "pie.json").write_text(json.dumps(ref, indent=1) + "\n")
    total = 0
    for f in sorted(p for p in OUT.rglob("*") if p.is_file()) + [mf.REF / "pie.json"]:
        total += f.stat().st_size
        mf.log(f"  {f.relative_to(mf.FIX)}: {f.stat().st_size:,} bytes")
    mf.log(f"  total {total:,} bytes")


if __name__ == "__main__":
    main()
