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


# -- raw images: PNG bytes or 8-bit pixel lists of any size, through the recorded resize / crop -----------------

COLOUR = {"kind": "image", "input": "pixel_values", "channels": 3, "height": 32, "width": 32, "scale": 1 / 255,
          "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize": {"shortest_edge": 36}, "resample": "bicubic",
          "crop": {"height": 32, "width": 32}}


def _png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format="PNG")
    return buf.getvalue()


def _gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)


def test_raw_images_are_resized_cropped_and_normalised_as_recorded():
    from PIL import Image

    s = image.spec(COLOUR)
    pixels = _gradient(40, 60)  # short side 40 -> 36, long side int(36 * 60 / 40) = 54; then the centre 32x32
    as_list = image.prepare_raw([pixels.tolist()], s)["pixel_values"]
    as_png = image.prepare_raw([_png(pixels)], s)["pixel_values"]
    np.testing.assert_array_equal(as_list, as_png)
    resized = np.asarray(Image.fromarray(pixels).resize((54, 36), resample=Image.Resampling.BICUBIC))
    expected = (resized[2:34, 11:43].astype(np.float64) / 255).astype(np.float32)
    expected = (expected - np.float32(0.5)) / np.float32(0.5)
    assert as_list.shape == (1, 3, 32, 32)
    np.testing.assert_array_equal(as_list[0], expected.transpose(2, 0, 1))
    # images of different sizes in one request come out at the model's size
    batch = image.prepare_raw([_gradient(50, 33), _png(_gradient(36, 36)), pixels], s)["pixel_values"]
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[2], as_list[0])


def test_grey_and_transparent_images_become_rgb_as_transformers_converts_them():
    s = image.spec({**COLOUR, "resize": {"height": 32, "width": 32}, "crop": None, "mean": None, "std": None})
    grey = np.full((32, 32), 100, np.uint8)
    out = image.prepare_raw([grey.tolist(), _png(grey)], s)["pixel_values"]
    np.testing.assert_allclose(out, np.float32(100 / 255))
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:16, :, :] = (255, 0, 0, 255)  # opaque red on top, fully transparent below: white
    for raw in (rgba.tolist(), _png(rgba)):
        out = image.prepare_raw([raw], s)["pixel_values"][0]
        np.testing.assert_allclose(out[:, 0, 0], [1, 0, 0])
        np.testing.assert_allclose(out[:, 31, 0], [1, 1, 1])
    bgr = image.prepare_raw([_gradient(32, 32)], image.spec({**COLOUR, "channel_order": "BGR", "resize": None,
                                                             "crop": None}))["pixel_values"][0]
    np.testing.assert_array_equal(bgr, image.prepare_raw([_gradient(32, 32)[..., ::-1].copy()], image.spec(
        {**COLOUR, "resize": None, "crop": None}))["pixel_values"][0])


def test_a_bundle_without_a_recorded_resize_takes_raw_images_of_its_size():
    """Bundles made before the resize keys read as before: no resize, no crop (and no Pillow needed)."""
    from sklearn.datasets import load_digits

    digits = load_digits().images[:3].astype(np.uint8)
    out = image.prepare_raw([d.tolist() for d in digits], image.spec(DIGITS))["image"]
    np.testing.assert_array_equal(out, image.prepare(digits, image.spec(DIGITS))["image"])
    with pytest.raises(InputError, match=r"images are 8x9 with 1 channel\(s\); the model takes 8x8"):
        image.prepare_raw([np.zeros((8, 9), np.uint8)], image.spec(DIGITS))
    with pytest.raises(InputError, match="come out in 2 sizes"):
        image.prepare_raw([np.zeros((8, 8)), np.zeros((9, 9))], image.spec(DIGITS))


def _huge_png() -> bytes:
    """A valid 1x1 PNG whose header claims 7000x7000 pixels, CRC fixed: over MAX_PIXELS, under Pillow's own
    decompression-bomb limits, so it is ours that refuses it from the header."""
    import struct
    import zlib

    data = bytearray(_png(np.zeros((1, 1, 3), np.uint8)))
    data[16:24] = struct.pack(">II", 7000, 7000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("raw, message", [
    (b"GIF89a....", "image 0: not a PNG file"),
    (_png(_gradient(8, 8))[:60], "image 0: not a readable PNG"),
    (_huge_png(), "image 0: 7000x7000 pixels, over the limit"),
    (_png(np.full((4, 4), 4000, np.uint16)), "give 8-bit images"),
    ([[0, 256], [1, 2]], "integers from 0 to 255"),
    ([[0.5, 1], [1, 2]], "integers from 0 to 255"),
    ("aGVsbG8=", "a string; give PNG bytes or pixel values"),
    ([[[1, 2]]], r"shape \(1, 1, 2\); expected \(H, W\) or \(H, W, C\)"),
    ([[1, 2], [3]], "not a rectangular array"),
    ([[True, False]], "must be numbers"),
])
def test_bad_raw_images_are_input_errors(raw, message):
    with pytest.raises(InputError, match=message):
        image.prepare_raw([raw], image.spec(COLOUR))
    with pytest.raises(InputError, match="non-empty list"):
        image.prepare_raw([], image.spec(COLOUR))


@pytest.mark.parametrize("entry, message", [
    ({**COLOUR, "resample": "cubic"}, "resample 'cubic'"),
    ({**COLOUR, "resize": {"height": 32}}, "gives neither height and width nor shortest_edge"),
    ({**COLOUR, "resize": {"longest_edge": 32}}, "not an object of height and width and shortest_edge"),
    ({**COLOUR, "crop": {"height": 32}}, "crop .* needs height and width"),
    ({**COLOUR, "crop": {"height": 0, "width": 3}}, "crop: height 0 is not a positive integer"),
    ({**COLOUR, "channel_order": "BGRA"}, "channel_order 'BGRA'"),
])
def test_a_malformed_resize_or_crop_is_a_model_error(entry, message):
    with pytest.raises(ModelError, match=message):
        image.spec(entry)
