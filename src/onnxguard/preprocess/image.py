"""``image.spec(preprocessing) -> ImageSpec``, ``image.prepare(images, spec)`` and ``image.prepare_raw(images, spec)``:
images as callers have them -> the float32 NCHW batch the model takes.

The manifest's ``preprocessing`` entry for an image model::

    {"kind": "image", "input": "pixel_values", "channels": 3, "height": 224, "width": 224, "layout": "NHWC",
     "channel_order": "RGB", "resize": {"shortest_edge": 256}, "resample": "bicubic",
     "crop": {"height": 224, "width": 224}, "scale": 0.00392156862745098,
     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

``layout`` is how callers give images: ``NHWC`` (channels last, as image libraries give them; a batch of grey
``(N, H, W)`` images is accepted too) or ``NCHW``. The model takes ``(N, C, H, W)`` float32:
``(pixels * scale - mean) / std`` per channel. ``channels``, ``height`` and ``width`` (the model's input) are checked
when given; ``scale`` defaults to 1, ``mean`` to 0 and ``std`` to 1.

:func:`prepare` takes a batch already at the model's size. :func:`prepare_raw` takes raw images of any size, one by
one: PNG bytes, or nested lists (arrays) of 8-bit pixel values (integers 0-255). Each is brought to ``channels``
(``channel_order`` RGB or BGR; grey repeated, transparency composited onto white, as Transformers' image
processors do), resized (``resize``: ``{"height", "width"}``, or ``{"shortest_edge"}`` keeping the aspect ratio, with
Pillow's ``resample`` filter, as Transformers' Pillow image processors resize), centre-cropped (``crop``), rescaled
and normalised. The optional keys are absent in bundles made before them, which read as before (no resize, no crop).
Pillow is needed only for PNG bytes and for resizing, and imported only then.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxguard.errors import InputError, ModelError

LAYOUTS = ("NHWC", "NCHW")
CHANNEL_ORDERS = ("RGB", "BGR")
# Pillow's filters by name, with their numbers (PIL.Image.Resampling), as Transformers' processors record them.
RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
# A raw image is decoded and resized whole before it shrinks to the model's size: 32 Mi pixels (a 6000x5600
# photo, 96 MiB as 8-bit RGB) bounds what one image can take, from its header, before its pixels are decoded.
MAX_PIXELS = 1 << 25
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WHERE = "the manifest's image preprocessing"


@dataclass(frozen=True)
class ImageSpec:
    """An image model's preprocessing, as the manifest describes it (see the module's docstring)."""

    input: str = "image"
    channels: int | None = None
    height: int | None = None
    width: int | None = None
    layout: str = "NHWC"
    scale: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_order: str = "RGB"
    resize: tuple[int, int] | None = None  # (height, width)
    shortest_edge: int | None = None  # resize keeping the aspect ratio, the shorter side to this
    resample: str = "bilinear"
    crop: tuple[int, int] | None = None  # centre crop (height, width)


def _dim(pre: Mapping, key: str, where: str = WHERE) -> int | None:
    value = pre.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"{where}: {key} {value!r} is not a positive integer")
    return value


def _floats(pre: Mapping, key: str, channels: int | None) -> tuple[float, ...] | None:
    value = pre.get(key)
    if value is None:
        return None
    values = value if isinstance(value, list | tuple) else [value]
    if not values or not all(isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) for v in values):
        raise ModelError(f"{WHERE}: {key} {value!r} is not a number or a list of numbers")
    if channels is not None and len(values) not in (1, channels):
        raise ModelError(f"{WHERE}: {key} has {len(values)} values for {channels} channels")
    if key == "std" and any(v == 0 for v in values):
        raise ModelError(f"{WHERE}: std {value!r} holds a zero")
    return tuple(float(v) for v in values)


def _size(pre: Mapping, key: str, keys: tuple[str, ...]) -> dict[str, int] | None:
    value = pre.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value or set(value) - set(keys):
        raise ModelError(f"{WHERE}: {key} {value!r} is not an object of {' and '.join(keys)}")
    return {k: d for k in value if (d := _dim(value, k, f"{WHERE}: {key}")) is not None}


def spec(preprocessing: Mapping) -> ImageSpec:
    """The image preprocessing the manifest describes; a malformed entry is a ``ModelError``."""
    pre = dict(preprocessing)
    if pre.get("kind") != "image":
        raise ModelError(f"the manifest's preprocessing is {pre.get('kind')!r}, not an image")
    layout = pre.get("layout", "NHWC")
    if layout not in LAYOUTS:
        raise ModelError(f"{WHERE}: layout {layout!r}; use {' or '.join(LAYOUTS)}")
    order = pre.get("channel_order", "RGB")
    if order not in CHANNEL_ORDERS:
        raise ModelError(f"{WHERE}: channel_order {order!r}; use {' or '.join(CHANNEL_ORDERS)}")
    resample = pre.get("resample", "bilinear")
    if resample not in RESAMPLE:
        raise ModelError(f"{WHERE}: resample {resample!r}; use one of {', '.join(RESAMPLE)}")
    scale = pre.get("scale", 1.0)
    if not isinstance(scale, int | float) or isinstance(scale, bool) or not np.isfinite(scale):
        raise ModelError(f"{WHERE}: scale {scale!r} is not a finite number")
    channels = _dim(pre, "channels")
    resize = _size(pre, "resize", ("height", "width", "shortest_edge"))
    if resize is not None and sorted(resize) not in (["height", "width"], ["shortest_edge"]):
        raise ModelError(f"{WHERE}: resize {pre['resize']!r} gives neither height and width nor shortest_edge")
    crop = _size(pre, "crop", ("height", "width"))
    if crop is not None and len(crop) != 2:
        raise ModelError(f"{WHERE}: crop {pre['crop']!r} needs height and width")
    return ImageSpec(str(pre.get("input", "image")), channels, _dim(pre, "height"), _dim(pre, "width"), layout,
                     float(scale), _floats(pre, "mean", channels), _floats(pre, "std", channels), order,
                     (resize["height"], resize["width"]) if resize and "height" in resize else None,
                     resize.get("shortest_edge") if resize else None, resample,
                     (crop["height"], crop["width"]) if crop else None)


def _normalised(x: np.ndarray, image_spec: ImageSpec) -> np.ndarray:
    """``(x * scale - mean) / std`` as float32, scaled in float64 first (as Transformers' processors rescale)."""
    out = (x.astype(np.float64) * image_spec.scale).astype(np.float32)
    if image_spec.mean is not None:
        out -= np.asarray(image_spec.mean, np.float32).reshape(1, -1, 1, 1)
    if image_spec.std is not None:
        out /= np.asarray(image_spec.std, np.float32).reshape(1, -1, 1, 1)
    if not np.isfinite(out).all():
        raise InputError("images hold values that are not finite numbers (NaN or infinity) after scaling")
    return np.ascontiguousarray(out)


def _check_size(x: np.ndarray, image_spec: ImageSpec) -> None:
    _, c, h, w = x.shape
    expected = (image_spec.channels or c, image_spec.height or h, image_spec.width or w)
    if (c, h, w) != expected:
        raise InputError(f"images are {h}x{w} with {c} channel(s); the model takes {expected[1]}x{expected[2]} "
                         f"with {expected[0]}")


def prepare(images, image_spec: ImageSpec) -> dict[str, np.ndarray]:
    """``{input: float32 (N, C, H, W)}`` from a batch of images laid out as ``image_spec.layout`` says."""
    x = np.asarray(images)
    if x.dtype.kind not in "uifb":
        raise InputError(f"images must be numbers, not {x.dtype} values")
    if x.ndim == 3 and image_spec.channels in (None, 1):
        x = x[:, None]
    elif x.ndim == 4:
        x = x.transpose(0, 3, 1, 2) if image_spec.layout == "NHWC" else x
    else:
        want = "(N, H, W) or (N, H, W, C)" if image_spec.layout == "NHWC" else "(N, C, H, W)"
        raise InputError(f"images have shape {x.shape}; expected a batch {want}")
    if len(x) == 0:
        raise InputError("no images given")
    _check_size(x, image_spec)
    return {image_spec.input: _normalised(x, image_spec)}


# -- raw images --------------------------------------------------------------------------------------------------

def _pillow():
    try:
        from PIL import Image
    except ImportError as e:  # a serving install without Pillow
        raise ModelError("this model's images need Pillow to decode PNG or to resize, and it is not installed",
                         hint="pip install pillow") from e
    return Image


def _decoded(data: bytes, i: int, channels: int):
    """A PNG as a Pillow image of 1 or 3 channels, refused from its header when it is too large."""
    Image = _pillow()
    if not data.startswith(PNG_SIGNATURE):
        raise InputError(f"image {i}: not a PNG file (give PNG bytes or pixel values)")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            width, height = im.size
            if width * height > MAX_PIXELS:
                raise InputError(f"image {i}: {width}x{height} pixels, over the limit of {MAX_PIXELS}")
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise InputError(f"image {i}: a {im.mode} PNG; give 8-bit images")
            im.load()
            return _to_channels(im, channels)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise InputError(f"image {i}: not a readable PNG ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                         ) from None


def _to_channels(im, channels: int):
    """Grey or RGB as the model takes; transparency composited onto white (Transformers' ``convert_to_rgb``)."""
    Image = _pillow()
    if "A" in im.getbands() or im.info.get("transparency") is not None:
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    return im.convert("L" if channels == 1 else "RGB")


def _pixels(value, i: int, image_spec: ImageSpec) -> np.ndarray:
    """Nested lists (or an array) of 8-bit pixel values as uint8 (H, W, C)."""
    try:
        x = np.asarray(value)
    except (ValueError, TypeError):  # ragged rows
        raise InputError(f"image {i}: pixel values are not a rectangular array") from None
    if x.dtype.kind not in "uif" or x.size == 0:
        raise InputError(f"image {i}: pixel values must be numbers")
    if x.ndim == 3 and image_spec.layout == "NCHW":
        x = x.transpose(1, 2, 0)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[-1] not in (1, 3, 4):
        want = "(H, W) or (H, W, C)" if image_spec.layout == "NHWC" else "(H, W) or (C, H, W)"
        raise InputError(f"image {i}: shape {x.shape}; expected {want} with 1, 3 or 4 channels")
    if x.shape[0] * x.shape[1] > MAX_PIXELS:
        raise InputError(f"image {i}: {x.shape[1]}x{x.shape[0]} pixels, over the limit of {MAX_PIXELS}")
    if not np.isfinite(x).all() or (x != np.round(x)).any() or x.min() < 0 or x.max() > 255:
        raise InputError(f"image {i}: pixel values must be integers from 0 to 255")
    x = x.astype(np.uint8)
    c = image_spec.channels or x.shape[-1]
    if x.shape[-1] == c:
        return x
    if x.shape[-1] == 4 or c == 1:  # alpha, or colour to grey: as Pillow converts
        Image = _pillow()
        im = Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x)
        return np.asarray(_to_channels(im, c)).reshape(*x.shape[:2], c)
    if x.shape[-1] == 1 and c == 3:
        return np.repeat(x, 3, axis=-1)
    raise InputError(f"image {i}: {x.shape[-1]} channels; the model takes {c}")


def _resized(x: np.ndarray, image_spec: ImageSpec) -> np.ndarray:
    h, w = x.shape[:2]
    if image_spec.resize is not None:
        size = image_spec.resize
    elif image_spec.shortest_edge is not None:
        # Transformers' get_resize_output_image_size: the short side to shortest_edge, the long side truncated
        s = image_spec.shortest_edge
        size = (int(s * h / w), s) if w <= h else (s, int(s * w / h))
    else:
        return x
    Image = _pillow()
    im = Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x)
    out = np.asarray(im.resize((size[1], size[0]), resample=RESAMPLE[image_spec.resample]))
    return out.reshape(size[0], size[1], x.shape[-1])


def _cropped(x: np.ndarray, i: int, image_spec: ImageSpec) -> np.ndarray:
    if image_spec.crop is None:
        return x
    (h, w), (ch, cw) = x.shape[:2], image_spec.crop
    if ch > h or cw > w:
        raise InputError(f"image {i}: {h}x{w} after resizing, smaller than the {ch}x{cw} crop")
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[top : top + ch, left : left + cw]


def prepare_raw(images: Sequence, image_spec: ImageSpec) -> dict[str, np.ndarray]:
    """``{input: float32 (N, C, H, W)}`` from raw images of any size: each PNG bytes, or nested lists of 8-bit pixel
    values laid out as ``image_spec.layout`` says for one image (``(H, W[, C])`` or ``(C, H, W)``); each brought to
    the model's channels, resized, cropped, rescaled and normalised as the manifest records."""
    if isinstance(images, bytes | str) or not len(images):
        raise InputError("give a non-empty list of images")
    c = image_spec.channels or 3
    prepared = []
    for i, image in enumerate(images):
        if isinstance(image, bytes | bytearray | memoryview):
            x = np.asarray(_decoded(bytes(image), i, c))
            x = x[..., None] if x.ndim == 2 else x
        elif isinstance(image, str):
            raise InputError(f"image {i}: a string; give PNG bytes or pixel values")
        else:
            x = _pixels(image, i, image_spec)
        if image_spec.channel_order == "BGR":
            x = x[..., ::-1]
        prepared.append(_cropped(_resized(x, image_spec), i, image_spec).transpose(2, 0, 1))
    shapes = {p.shape for p in prepared}
    if len(shapes) > 1:
        raise InputError(f"images come out in {len(shapes)} sizes ({', '.join(f'{h}x{w}' for _, h, w in shapes)}); "
                         "this model records no resize, so give images of its size")
    x = np.stack(prepared)
    _check_size(x, image_spec)
    return {image_spec.input: _normalised(x, image_spec)}
