"""Deterministic image transforms: uint8 HWC in, normalised float32 CHW out.

The geometry is Pillow's (``Image.resize`` with a crop box, ``Image.transpose``), the same
calls torchvision's transforms make on PIL images; torchvision itself does not import beside
the CPU torch here (see ``image_sources``). The random parameters of the train transform
(crop box, flip) are a function of a row of ``draws`` uniforms in [0, 1), never of a global
RNG: ``augment_rng(seed, rank, step, micro)`` seeds one Generator per micro-batch and
``load_batch`` draws a (batch, draws) array from it, so example k's augmentation is a pure
function of (seed, rank, step, micro, k) and a resumed or retried step sees the same pixels.
One vectorised draw per batch costs microseconds, where a Generator per example (``spawn``)
or scalar draws cost tens of microseconds per image: as much as decoding an 8x8 PNG.

- train: random resized crop (area fraction ``scale``, aspect ``ratio``, log-uniform; the
  Inception crop with torchvision's 10 tries and centre-crop fallback) to ``size`` x ``size``,
  then a horizontal flip with probability ``flip`` (0 for digits and text);
- eval: resize the short side to ``int(size / crop_fraction)`` and centre-crop ``size``
  (ImageNet: 256 -> 224, ``crop_fraction=0.875``), or with ``crop_fraction=None`` a plain
  resize to ``size`` x ``size`` (tiny images such as 8x8 digits).

Resizing is bilinear; Pillow's filters widen their support when downscaling (antialiased).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

AUGMENT_STREAM = 0x1A6E  # keeps augmentation draws apart from other users of the trial seed
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def augment_rng(seed: int, rank: int, step: int, micro: int) -> np.random.Generator:
    """The augmentation generator of one micro-batch: a pure function of its coordinates."""
    return np.random.default_rng([AUGMENT_STREAM, seed, rank, step, micro])


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def from_pil(im: Image.Image) -> np.ndarray:
    arr = np.asarray(im)
    return arr[..., None] if arr.ndim == 2 else arr


class Normalize:
    """uint8 HWC -> float32 CHW, ``(x / 255 - mean) / std`` per channel; ``mean``/``std`` hold
    one value for every channel or one per channel."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean {mean} and std {std}: need equal lengths (1 or channels) "
                             "and std > 0")
        std32 = np.asarray(std, np.float32)[:, None, None]
        self.scale = 1.0 / (255.0 * std32)
        self.shift = np.asarray(mean, np.float32)[:, None, None] / std32

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if len(self.scale) not in (1, image.shape[-1]):
            raise ValueError(f"mean/std have {len(self.scale)} values for a "
                             f"{image.shape[-1]}-channel image: give 1 or one per channel")
        x = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
        x *= self.scale  # in place, one channel plane at a time: 3x faster than on HWC
        x -= self.shift
        return x


CROP_TRIES = 10
CROP_DRAWS = 2 * CROP_TRIES + 2  # (area, aspect) per try, then (top, left)


def crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
             u: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop with area fraction uniform in ``scale`` and
    aspect ratio (w/h) log-uniform in ``ratio``, from ``CROP_DRAWS`` uniforms ``u``; after 10
    misses, the largest centred crop whose aspect is clamped to ``ratio``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for t in range(CROP_TRIES):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * t])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[2 * t + 1])
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u[-2] * (height - h + 1)), height - h)
            left = min(int(u[-1] * (width - w + 1)), width - w)
            return left, top, left + w, top + h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


@dataclass(frozen=True)
class TrainTransform:
    """Random resized crop + optional horizontal flip + normalisation."""

    draws = CROP_DRAWS + 1  # uniforms per example: the crop, then the flip

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    norm: Normalize = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.size < 1 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"size={self.size}, scale={self.scale}: need size >= 1 and "
                             "0 < scale[0] <= scale[1] <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1] or not 0 <= self.flip <= 1:
            raise ValueError(f"ratio={self.ratio}, flip={self.flip}: need 0 < ratio[0] <= "
                             "ratio[1] and a flip probability in [0, 1]")
        object.__setattr__(self, "norm", Normalize(self.mean, self.std))

    def geometry(self, image: np.ndarray, u: np.ndarray) -> np.ndarray:
        """uint8 HWC -> uint8 ``size`` x ``size``: the crop and flip that ``u`` (``draws``
        uniforms in [0, 1)) choose."""
        if len(u) != self.draws:
            raise ValueError(f"need {self.draws} uniforms per example, got {len(u)}")
        box = crop_box(image.shape[0], image.shape[1], self.scale, self.ratio, u[:CROP_DRAWS])
        im = to_pil(image).resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        if u[CROP_DRAWS] < self.flip:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return from_pil(im)

    def __call__(self, image: np.ndarray, u: np.ndarray) -> np.ndarray:
        return self.norm(self.geometry(image, u))


@dataclass(frozen=True)
class EvalTransform:
    """Resize + centre crop (or plain resize) + normalisation; no randomness."""

    draws = 0

    size: int
    crop_fraction: float | None = 0.875
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    norm: Normalize = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.size < 1 or (self.crop_fraction is not None and not 0 < self.crop_fraction <= 1):
            raise ValueError(f"size={self.size}, crop_fraction={self.crop_fraction}: need "
                             "size >= 1 and crop_fraction in (0, 1] or None (plain resize)")
        object.__setattr__(self, "norm", Normalize(self.mean, self.std))

    def geometry(self, image: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
        """uint8 HWC -> uint8 ``size`` x ``size``; ``u`` is accepted and unused."""
        im = to_pil(image)
        if self.crop_fraction is None:
            return from_pil(im.resize((self.size, self.size), Image.Resampling.BILINEAR))
        short = int(self.size / self.crop_fraction)
        w, h = im.size
        new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        im = im.resize(new, Image.Resampling.BILINEAR)
        left = round((new[0] - self.size) / 2)
        top = round((new[1] - self.size) / 2)
        return from_pil(im.crop((left, top, left + self.size, top + self.size)))

    def __call__(self, image: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
        return self.norm(self.geometry(image))
