"""``image.spec(preprocessing) -> ImageSpec`` and ``image.prepare(images, spec)``: images -> float32 NCHW.

The manifest's ``preprocessing`` entry for an image model::

    {"kind": "image", "input": "image", "channels": 1, "height": 8, "width": 8,
     "layout": "NHWC", "scale": 0.0625, "mean": [0.5], "std": [0.25]}

``layout`` is how callers give images: ``NHWC`` (channels last, as image libraries give them; a batch of grey
``(N, H, W)`` images is accepted too) or ``NCHW``. The model takes ``(N, C, H, W)`` float32:
``(pixels * scale - mean) / std`` per channel. ``channels``, ``height`` and ``width`` are checked when given;
``scale`` defaults to 1, ``mean`` to 0 and ``std`` to 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from onnxguard.errors import InputError, ModelError

LAYOUTS = ("NHWC", "NCHW")
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


def _dim(pre: Mapping, key: str) -> int | None:
    value = pre.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"{WHERE}: {key} {value!r} is not a positive integer")
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


def spec(preprocessing: Mapping) -> ImageSpec:
    """The image preprocessing the manifest describes; a malformed entry is a ``ModelError``."""
    pre = dict(preprocessing)
    if pre.get("kind") != "image":
        raise ModelError(f"the manifest's preprocessing is {pre.get('kind')!r}, not an image")
    layout = pre.get("layout", "NHWC")
    if layout not in LAYOUTS:
        raise ModelError(f"{WHERE}: layout {layout!r}; use {' or '.join(LAYOUTS)}")
    scale = pre.get("scale", 1.0)
    if not isinstance(scale, int | float) or isinstance(scale, bool) or not np.isfinite(scale):
        raise ModelError(f"{WHERE}: scale {scale!r} is not a finite number")
    channels = _dim(pre, "channels")
    return ImageSpec(str(pre.get("input", "image")), channels, _dim(pre, "height"), _dim(pre, "width"), layout,
                     float(scale), _floats(pre, "mean", channels), _floats(pre, "std", channels))


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
    n, c, h, w = x.shape
    expected = (image_spec.channels or c, image_spec.height or h, image_spec.width or w)
    if (c, h, w) != expected:
        raise InputError(f"images are {h}x{w} with {c} channel(s); the model takes {expected[1]}x{expected[2]} "
                         f"with {expected[0]}")
    out = x.astype(np.float32) * np.float32(image_spec.scale)
    if image_spec.mean is not None:
        out -= np.asarray(image_spec.mean, np.float32).reshape(1, -1, 1, 1)
    if image_spec.std is not None:
        out /= np.asarray(image_spec.std, np.float32).reshape(1, -1, 1, 1)
    if not np.isfinite(out).all():
        raise InputError("images hold values that are not finite numbers (NaN or infinity) after scaling")
    return {image_spec.input: np.ascontiguousarray(out)}
