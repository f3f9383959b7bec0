"""ImageNet-C style corruptions of held-out images, deterministic per image.

Operations and severity parameters are those of ImageNet-C (Hendrycks & Dietterich 2019,
``hendrycks/robustness`` ``imagenet_c/corruptions.py``), re-implemented on uint8 HWC arrays
with Pillow and scipy.ndimage, size-agnostic:

- gaussian_noise: ``clip(x + N(0, c))`` on [0, 1] pixels;
- gaussian_blur: Gaussian of std ``c`` (scipy ``gaussian_filter``, mode "nearest", truncate 4:
  what skimage's ``gaussian`` runs). Pillow's ``GaussianBlur`` is a box-blur approximation,
  hence scipy;
- defocus_blur: a disk of radius ``r`` softened by a Gaussian of std ``alias``, normalised
  to sum 1, correlated with each channel (mode "mirror", OpenCV's default border);
- contrast: ``(x - mean) * c + mean``, the mean per channel over the image;
- jpeg_compression: Pillow JPEG save at quality ``c`` and reload;
- pixelate: Pillow BOX resize to ``c`` times the size and back;
- brightness: ``v + c`` on the HSV value, clipped. With hue and saturation fixed RGB is
  proportional to V, so this is ``x * min(V + c, 1) / V`` with ``V = max_channel(x)``
  (grey ``c`` where ``V = 0``): exact, without an HSV round trip.

Lengths are relative to ImageNet-C's 224-pixel crops: blur std, disk radius and anti-alias
std are multiplied by ``min(height, width) / 224``, and pixelate is a fraction of the size
already; so a 224 x 224 input gets exactly ImageNet-C's parameters and a 32 x 32 one a
blur 7 times narrower. Results are rounded to the nearest integer (ImageNet-C truncates).

Randomness (only gaussian_noise draws) comes from a Generator seeded by a blake2b digest of
(seed, index, name, severity), never from numpy's global RNG. :class:`CorruptedSplit` applies
a corruption where ImageNet-C does: after the eval resize and centre crop, before
normalisation. scipy loads with the first blur: the image task's registration reads
``SEVERITIES`` in every driver, trial actor and worker, most of which never blur an image.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from reliscale.data.image_transforms import EvalTransform, from_pil, to_pil

REFERENCE_SIZE = 224
SEVERITIES: dict[str, tuple] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "gaussian_blur": (1, 2, 3, 4, 6),
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "jpeg_compression": (25, 18, 15, 10, 7),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
}


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8, clipped and rounded."""
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def length_scale(x: np.ndarray) -> float:
    return min(x.shape[0], x.shape[1]) / REFERENCE_SIZE


def gaussian_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return to_uint8(x / 255.0 + rng.normal(0.0, c, size=x.shape))


def gaussian_blur(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    s = c * length_scale(x)
    blurred = ndimage.gaussian_filter(x / 255.0, sigma=(s, s, 0), mode="nearest", truncate=4.0)
    return to_uint8(blurred)


def disk_kernel(radius: float, alias: float) -> np.ndarray:
    """A disk of ``radius`` pixels, smoothed by a Gaussian of std ``alias``, summing to 1."""
    from scipy import ndimage

    half = int(np.ceil(radius)) + 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk = ndimage.gaussian_filter(disk, alias, mode="constant") if alias > 0 else disk
    return disk / disk.sum()


def defocus_blur(x: np.ndarray, c: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    kernel = disk_kernel(c[0] * length_scale(x), c[1] * length_scale(x))
    return to_uint8(ndimage.correlate(x / 255.0, kernel[..., None], mode="mirror"))


def contrast(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = x / 255.0
    mean = x.mean(axis=(0, 1), keepdims=True)
    return to_uint8((x - mean) * c + mean)


def jpeg_compression(x: np.ndarray, c: int, rng: np.random.Generator) -> np.ndarray:
    im = to_pil(x)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=c)
    with Image.open(buf) as out:
        return from_pil(out.convert(im.mode))


def pixelate(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    small = (max(1, int(w * c)), max(1, int(h * c)))
    im = to_pil(x).resize(small, Image.Resampling.BOX).resize((w, h), Image.Resampling.BOX)
    return from_pil(im)


def brightness(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = x / 255.0
    v = x.max(axis=-1, keepdims=True)
    bright = np.minimum(v + c, 1.0)
    return to_uint8(np.where(v > 0, x * bright / np.where(v > 0, v, 1.0), bright))


CORRUPTIONS = {f.__name__: f for f in (gaussian_noise, gaussian_blur, defocus_blur, contrast,
                                       jpeg_compression, pixelate, brightness)}


def corruption_rng(seed: int, index: int, name: str, severity: int) -> np.random.Generator:
    digest = hashlib.blake2b(f"{seed}/{index}/{name}/{severity}".encode(), digest_size=16)
    return np.random.default_rng(int.from_bytes(digest.digest(), "little"))


def corrupt(image: np.ndarray, name: str, severity: int, seed: int, index: int = 0) -> np.ndarray:
    """Corrupt one uint8 HWC image (1 or 3 channels); same arguments, same pixels."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}: allowed {sorted(CORRUPTIONS)}")
    if severity not in range(1, 6):
        raise ValueError(f"{name}: severity {severity!r} not in 1..5")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"{name}: need a uint8 HWC image with 1 or 3 channels, got "
                         f"{image.dtype} {image.shape}")
    rng = corruption_rng(seed, index, name, severity)
    return CORRUPTIONS[name](image, SEVERITIES[name][severity - 1], rng)


class CorruptedSplit:
    """A held-out split seen through one corruption at one severity: eval geometry, then the
    corruption (seeded by the example's index in the split), then normalisation."""

    def __init__(self, split, name: str, severity: int, seed: int):
        corrupt(np.zeros((1, 1, 1), np.uint8), name, severity, seed)  # checks name and severity
        self.split, self.name, self.severity, self.seed = split, name, severity, seed
        self.classes, self.labels = split.classes, split.labels

    def __len__(self) -> int:
        return len(self.split)

    def load_batch(self, indices: Sequence[int], transform: EvalTransform, rng=None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """(float32 NCHW, int64 labels), like ``ImageSplit.load_batch``; ``rng`` is unused."""
        x = np.stack([transform.norm(im) for im in self.eval_pixels(indices, transform)])
        return x, self.labels[np.asarray(indices, dtype=np.int64)]

    def eval_pixels(self, indices: Sequence[int], transform: EvalTransform) -> list[np.ndarray]:
        """uint8 HWC: the eval geometry, then the corruption; not yet normalised."""
        if not isinstance(transform, EvalTransform):
            raise TypeError(f"corrupted splits are eval data: need an EvalTransform, got "
                            f"{type(transform).__name__}")
        return self.split.map(lambda i: corrupt(transform.geometry(self.split.load(i)), self.name,
                                                 self.severity, self.seed, int(i)), indices)
