"""ImageNet-C style corruptions: deterministic, monotone in severity on real digits, and equal
to closed forms / independent references where one exists."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from reliscale.data.corruptions import CORRUPTIONS, SEVERITIES, CorruptedSplit, corrupt
from reliscale.data.image_transforms import EvalTransform, TrainTransform


@pytest.fixture(scope="module")
def digits224() -> list[np.ndarray]:
    """8 real digit scans (uint8 0-255) upscaled to ImageNet-C's 224 x 224, one channel."""
    scans = np.rint(load_digits().images[:8] * 255 / 16).astype(np.uint8)
    return [np.asarray(Image.fromarray(x).resize((224, 224), Image.Resampling.BILINEAR))[..., None]
            for x in scans]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 10 * np.log10(255**2 / mse) if mse > 0 else np.inf


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_psnr_falls_with_severity_on_real_digits(digits224, name):
    curve = [np.mean([psnr(corrupt(x, name, s, seed=0, index=i), x)
                      for i, x in enumerate(digits224)]) for s in range(1, 6)]
    assert np.isfinite(curve[0]) and all(np.diff(curve) < 0), curve


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_shape_and_dtype_are_kept(name):
    rng = np.random.default_rng(0)
    for shape in ((40, 56, 3), (33, 20, 1)):
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        y = corrupt(x, name, 3, seed=1)
        assert y.shape == shape and y.dtype == np.uint8


def test_corruption_is_seeded_per_image_not_by_the_global_rng(digits224):
    x = digits224[0]
    np.random.seed(0)
    a = corrupt(x, "gaussian_noise", 2, seed=7, index=3)
    state = np.random.get_state()[1].copy()
    np.random.seed(123)
    np.testing.assert_array_equal(a, corrupt(x, "gaussian_noise", 2, seed=7, index=3))
    np.random.seed(0)
    corrupt(x, "gaussian_noise", 2, seed=7, index=3)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # global RNG untouched
    for other in (dict(seed=8, index=3), dict(seed=7, index=4)):
        assert not np.array_equal(a, corrupt(x, "gaussian_noise", 2, **other)), other


def test_gaussian_noise_has_the_imagenet_c_std():
    x = np.full((96, 96, 3), 128, np.uint8)  # mid-grey: no clipping at severities 1-2
    for severity in (1, 2):
        c = SEVERITIES["gaussian_noise"][severity - 1]
        noise = (corrupt(x, "gaussian_noise", severity, seed=0).astype(np.float64) - 128) / 255
        se = c / np.sqrt(noise.size)
        assert abs(noise.mean()) < 4 * se
        assert noise.std() == pytest.approx(c, rel=0.02)
        assert np.mean(np.abs(noise) < c) == pytest.approx(0.6827, abs=0.015)


def test_contrast_scales_deviations_from_the_channel_mean():
    rng = np.random.default_rng(0)
    x = rng.integers(64, 192, (50, 60, 3), dtype=np.uint8)  # no clipping for c <= 1
    for severity, c in enumerate(SEVERITIES["contrast"], start=1):
        y = corrupt(x, "contrast", severity, seed=0).astype(np.float64)
        mean = x.mean(axis=(0, 1))
        np.testing.assert_allclose(y, (x - mean) * c + mean, atol=0.5 + 1e-9)
        np.testing.assert_allclose(y.mean(axis=(0, 1)), mean, atol=0.5)
        np.testing.assert_allclose(y.std(axis=(0, 1)), c * x.std(axis=(0, 1)), atol=0.3)


def test_gaussian_blur_at_224_px_is_imagenet_c_sigma(digits224):
    """Independent reference: a sampled Gaussian truncated at 4 sigma, edge-padded, applied as
    two 1-D numpy convolutions; 224 px means sigma = the ImageNet-C value itself."""
    x = digits224[1][..., 0] / 255.0
    for severity in (1, 3):
        sigma = SEVERITIES["gaussian_blur"][severity - 1]
        r = int(4 * sigma + 0.5)
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
        k /= k.sum()
        pad = np.pad(x, r, mode="edge")
        rows = np.apply_along_axis(np.convolve, 1, pad, k, mode="valid")
        ref = np.apply_along_axis(np.convolve, 0, rows, k, mode="valid")
        out = corrupt(digits224[1], "gaussian_blur", severity, seed=0)[..., 0]
        assert np.abs(out.astype(np.float64) - ref * 255).max() <= 0.5 + 1e-6


def test_blur_widths_scale_with_image_size(digits224):
    """Blurring a 112 px image at severity 4 matches blurring the 224 px original at severity 4
    and halving it, and not at any other severity: widths are relative to the image size."""

    def halve(im: np.ndarray) -> np.ndarray:
        out = Image.fromarray(im[..., 0]).resize((112, 112), Image.Resampling.BOX)
        return np.asarray(out)[..., None]

    x = digits224[2]
    small = corrupt(halve(x), "gaussian_blur", 4, 0).astype(np.float64)
    err = [np.abs(halve(corrupt(x, "gaussian_blur", s, 0)) - small).mean() for s in range(1, 6)]
    assert int(np.argmin(err)) + 1 == 4 and err[3] < 0.25, err


def test_pixelate_at_half_size_is_the_two_by_two_block_mean():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
    blocks = x[..., 0].reshape(4, 2, 4, 2).mean(axis=(1, 3))
    ref = np.kron(blocks, np.ones((2, 2)))
    out = corrupt(x, "pixelate", 2, seed=0)[..., 0]  # c = 0.5
    assert np.abs(out - ref).max() <= 1.0  # Pillow resamples uint8 in fixed point


def test_brightness_equals_an_hsv_round_trip():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    x[0, 0] = 0  # black: hue undefined, becomes grey c
    for severity, c in enumerate(SEVERITIES["brightness"], start=1):
        ref = np.empty((12, 12, 3))
        for i, j in np.ndindex(12, 12):
            h, s, v = colorsys.rgb_to_hsv(*(x[i, j] / 255.0))
            ref[i, j] = colorsys.hsv_to_rgb(h, s, min(v + c, 1.0))
        out = corrupt(x, "brightness", severity, seed=0)
        assert np.abs(out - ref * 255).max() <= 0.5 + 1e-6


def test_jpeg_quality_changes_bytes_not_shape(digits224):
    x = np.repeat(digits224[3], 3, axis=-1)
    out = [corrupt(x, "jpeg_compression", s, seed=0) for s in (1, 5)]
    assert not np.array_equal(out[0], out[1]) and out[0].shape == x.shape


class ListSplit:
    """A stand-in for ImageSplit: images in memory."""

    def __init__(self, images):
        self.images, self.classes = images, ["a", "b"]
        self.labels = np.arange(len(images)) % 2

    def __len__(self):
        return len(self.images)

    def load(self, i):
        return self.images[i]

    def map(self, fn, *items):
        return list(map(fn, *items))


def test_corrupted_split_corrupts_after_the_eval_geometry_keyed_by_index(digits224):
    scans = [np.ascontiguousarray(x[::7, ::7]) for x in digits224]  # 32 x 32
    tf = EvalTransform(28, crop_fraction=0.875)
    split = CorruptedSplit(ListSplit(scans), "gaussian_noise", 3, seed=5)
    x, y = split.load_batch([2, 5], tf)
    expect = corrupt(tf.geometry(scans[5]), "gaussian_noise", 3, 5, index=5)
    np.testing.assert_allclose(x[1, 0], (expect[..., 0] / 255 - 0.5) / 0.5, atol=1e-6)
    np.testing.assert_array_equal(split.load_batch([5], tf)[0][0], x[1])  # not by position
    np.testing.assert_array_equal(y, [0, 1])
    with pytest.raises(TypeError, match="EvalTransform"):
        split.load_batch([0], TrainTransform(28))


def test_bad_corruption_arguments_are_named():
    x = np.zeros((8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(x, "fog", 1, 0)
    for severity in (0, 6):
        with pytest.raises(ValueError, match=f"severity {severity} not in 1..5"):
            corrupt(x, "contrast", severity, 0)
    with pytest.raises(ValueError, match="uint8 HWC"):
        corrupt(x.astype(np.float32), "contrast", 1, 0)
    with pytest.raises(ValueError, match="severity 9"):
        CorruptedSplit(ListSplit([x]), "contrast", 9, 0)
