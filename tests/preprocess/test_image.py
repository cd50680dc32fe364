"""preprocess.image: images as callers have them -> the float32 NCHW batch the model takes."""

from __future__ import annotations

import numpy as np
import pytest

from onnxguard.errors import InputError, ModelError
from onnxguard.preprocess import image

DIGITS = {"kind": "image", "input": "image", "channels": 1, "height": 8, "width": 8, "scale": 1 / 16}


def test_grey_digits_like_the_training_data():
    """scikit-learn's digits are 8x8 values 0..16; the CNN was trained on them divided by 16, as (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = image.prepare(digits.images[:5], image.spec(DIGITS))["image"]
    assert out.dtype == np.float32 and out.shape == (5, 1, 8, 8) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, (digits.images[:5] / 16.0).astype(np.float32)[:, None])


def test_channels_last_colour_images_are_transposed_and_normalised():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)  # N, H, W, C as image libraries give them
    s = image.spec({"kind": "image", "input": "pixels", "channels": 3, "height": 4, "width": 5, "scale": 1 / 255,
                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    out = image.prepare(pixels, s)["pixels"]
    assert out.shape == (3, 3, 4, 5)
    # pixel (n=1, h=2, w=3), channel 2 of the input is element [1, 2, 2, 3] of the output
    assert out[1, 2, 2, 3] == pytest.approx((pixels[1, 2, 3, 2] / 255 - 0.406) / 0.225, rel=1e-5)
    nchw = image.prepare(pixels.transpose(0, 3, 1, 2), image.ImageSpec(**{**s.__dict__, "layout": "NCHW"}))["pixels"]
    np.testing.assert_array_equal(out, nchw)


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 8, 7)), r"images are 8x7 with 1 channel\(s\); the model takes 8x8 with 1"),
    (np.zeros((2, 8, 8, 3)), r"with 3 channel\(s\); the model takes 8x8 with 1"),
    (np.zeros((8, 8)), r"shape \(8, 8\); expected a batch"),
    (np.zeros((0, 8, 8)), "no images"),
    (np.array([["a"] * 8] * 8)[None], "must be numbers"),
    (np.full((1, 8, 8), np.nan), "not finite"),
])
def test_bad_images_are_input_errors(images, message):
    with pytest.raises(InputError, match=message):
        image.prepare(images, image.spec(DIGITS))


@pytest.mark.parametrize("entry, message", [
    ({"kind": "table"}, "not an image"),
    ({**DIGITS, "layout": "HWC"}, "layout 'HWC'"),
    ({**DIGITS, "height": 0}, "height 0 is not a positive integer"),
    ({**DIGITS, "mean": [0.1, 0.2]}, "mean has 2 values for 1 channels"),
    ({**DIGITS, "std": [0]}, "std .* holds a zero"),
    ({**DIGITS, "scale": "1/16"}, "scale '1/16' is not a finite number"),
])
def test_a_malformed_manifest_entry_is_a_model_error(entry, message):
    with pytest.raises(ModelError, match=message):
        image.spec(entry)
