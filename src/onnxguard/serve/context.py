"""What the middleware learn about one request, carried in the ASGI scope from the outermost to the endpoint."""

from __future__ import annotations

import re
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onnxguard.serve.apikeys import ApiKey

SCOPE_KEY = "onnxguard"
# /v2/models/{name}[/versions/{v}][/infer|/ready] and /v1/models/{name}:predict
_MODEL_PATH = re.compile(r"^/v[12]/models/([^/:]+)")


@dataclass
class Context:
    """Mutable, one per request: each layer fills in what it knows."""

    arrival: float = field(default_factory=time.monotonic)
    wall: float = field(default_factory=time.time)
    key: ApiKey | None = None
    model: str | None = None
    digest: str | None = None
    body_sha256: str | None = None
    rows: int = 0
    batch_id: int | None = None
    reason: str = ""


def of(scope: MutableMapping[str, Any]) -> Context:
    """The request's context, made on first use."""
    ctx = scope.get(SCOPE_KEY)
    if not isinstance(ctx, Context):
        ctx = scope[SCOPE_KEY] = Context(model=model_of(scope.get("path", "")))
    return ctx


def model_of(path: str) -> str | None:
    """The model a request path names, if any."""
    m = _MODEL_PATH.match(path)
    return m.group(1) if m else None
