"""JPEG photos of three chroma layouts and what Pillow makes of them, for tests/it/images.rs.

Writes tests/fixtures/photos/jpeg/{astronaut-420,coffee-444,chelsea-grey}.jpg (scikit-image's
sample photos, full size, saved by Pillow at quality 90) and tests/fixtures/reference/
pil_images.json: per file, the SHA-256 of Pillow's decoded RGB pixels (`Image.open(f)
.convert("RGB")`, as PIE-Bench's scripts read images) and of those pixels resized as
transformers' CLIPImageProcessor resizes them (shortest edge 224, bicubic, `reducing_gap=None`),
with the sizes. Pillow 13.0.0 (libjpeg-turbo 3.2.0 inside its wheel), scikit-image 0.26.0.
"""
import hashlib
import json
from pathlib import Path

import PIL
import skimage
import skimage.data
from PIL import Image, features

ROOT = Path(__file__).resolve().parents[2] / "tests/fixtures"
PHOTOS = [("astronaut", "420", 2), ("coffee", "444", 0), ("chelsea", "grey", None)]


def main():
    out = ROOT / "photos/jpeg"
    out.mkdir(parents=True, exist_ok=True)
    ref = {"pillow": PIL.__version__, "libjpeg_turbo": features.version_feature("libjpeg_turbo"), "skimage": skimage.__version__, "files": {}}
    for name, layout, subsampling in PHOTOS:
        im = Image.fromarray(getattr(skimage.data, name)())
        path = out / f"{name}-{layout}.jpg"
        if subsampling is None:
            im.convert("L").save(path, quality=90)
        else:
            im.convert("RGB").save(path, quality=90, subsampling=subsampling)
        rgb = Image.open(path).convert("RGB")
        w, h = rgb.size
        # transformers' get_resize_output_image_size: the short side to 224, the long side int()
        rw, rh = (224, int(224 * h / w)) if w <= h else (int(224 * w / h), 224)
        resized = rgb.resize((rw, rh), resample=Image.BICUBIC, reducing_gap=None)
        ref["files"][path.name] = {
            "size": [w, h],
            "rgb_sha256": hashlib.sha256(rgb.tobytes()).hexdigest(),
            "clip_size": [rw, rh],
            "clip_resized_sha256": hashlib.sha256(resized.tobytes()).hexdigest(),
        }
    (ROOT / "reference/pil_images.json").write_text(json.dumps(ref, indent=1) + "\n")


if __name__ == "__main__":
    main()
