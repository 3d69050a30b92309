"""The coordinator's OpenAPI document, fetched from the live coordinator,
is a valid OpenAPI 3.1 document and names every route the client uses."""

from __future__ import annotations

import requests
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

import pytest


def test_the_document_is_valid_openapi_3_1(data_dir) -> None:
    url = (data_dir / "url").read_text().strip()
    # Public, like /healthz: no token needed.
    resp = requests.get(f"{url}/v1/openapi.json", verify=str(data_dir / "ca.pem"), timeout=30)
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["openapi"].startswith("3.1")
    validate(doc)
    for path in ("/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/result", "/v1/jobs/wordcount", "/v1/agents"):
        assert path in doc["paths"], path
    # Admin routes say they need the bearer token (or a dashboard session);
    # agent routes the bearer credential alone; the error shape is there.
    assert doc["paths"]["/v1/jobs"]["post"]["security"] == [{"bearer": []}, {"session": []}]
    assert doc["paths"]["/v1/agent/lease"]["post"]["security"] == [{"bearer": []}]
    assert "ErrorBody" in doc["components"]["schemas"]


def test_the_validator_catches_a_broken_document(data_dir) -> None:
    # So the test above cannot pass on a validator that accepts anything.
    with pytest.raises(OpenAPIValidationError):
        validate({"openapi": "3.1.0", "info": {"title": "x"}, "paths": {"/a": {"get": {"responses": 7}}}})
