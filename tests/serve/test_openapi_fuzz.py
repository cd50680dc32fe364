"""schemathesis against the server's own OpenAPI description: whatever it sends, never a 5xx, and every refusal
is ``{"error": ...}``."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

# Generated requests per operation: enough to reach every branch of validation, few enough to stay seconds.
EXAMPLES = 40


@pytest.mark.slow
def test_no_generated_request_makes_a_server_error(server):
    doc = httpx.get(f"{server.url}/openapi.json", headers=server.headers()).json()
    for item in doc["paths"].values():  # the served models by name, so that bodies reach validation
        for operation in item.values():
            for param in operation.get("parameters", ()):
                if param["name"] == "name":
                    param["schema"] = {"type": "string", "enum": ["digits", "text"]}
    schema = schemathesis.openapi.from_dict(doc)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v2/models/{name}/infer", "/v1/models/{name}:predict"}
    failures: list[str] = []
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=30) as client:
        for op in operations:
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=op.as_strategy())
            def check(case) -> None:
                kwargs = case.as_transport_kwargs(base_url=server.url, headers=server.headers())
                r = client.request(kwargs["method"], kwargs["url"], headers=kwargs.get("headers"),
                                   params=kwargs.get("params"), json=kwargs.get("json"), content=kwargs.get("data"))
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code >= 500 or (r.status_code >= 400 and "error" not in r.json()):
                    failures.append(f"{case.method} {r.url}: {r.status_code} {r.text[:200]}")

            check()
    assert not failures, "\n".join(failures[:10])
    assert statuses.get(400, 0) > 10 and statuses.get(200, 0) > 0, statuses  # validation was reached, and passed
