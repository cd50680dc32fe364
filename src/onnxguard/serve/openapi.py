"""``openapi.document(routes, ...)``: the server's OpenAPI description, made from its routes. Each route gives its
path, methods and path parameters, its endpoint's docstring the summary; inference routes add their request body.
Every refusal is described once, as ``{"error": "..."}``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.routing import BaseRoute, Route

OPENAPI_VERSION = "3.1.0"
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def document(routes: Sequence[BaseRoute], *, title: str, version: str,
             bodies: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The description of ``routes``; ``bodies`` maps a route's path to the request body its POST takes."""
    refused = {"description": "Refused, with the reason", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in route.param_convertors]
        summary = (route.endpoint.__doc__ or route.name).strip().splitlines()[0]
        for method in sorted((route.methods or set()) - {"HEAD"}):
            operation: dict[str, Any] = {"summary": summary, "operationId": f"{route.name}_{method.lower()}",
                                         "responses": {"200": {"description": "Answered"}, "4XX": refused,
                                                       "503": refused}}
            if parameters:
                operation["parameters"] = parameters
            if method == "POST" and route.path in bodies:
                operation["requestBody"] = bodies[route.path]
            paths.setdefault(route.path, {})[method.lower()] = operation
    return {"openapi": OPENAPI_VERSION, "info": {"title": title, "version": version}, "paths": paths,
            "components": {"schemas": {"Error": ERROR}}}
