"""Schemathesis against a live coordinator of its own, with the admin
token: requests generated from the OpenAPI document (valid and not), and
every answer must be no 5xx and match the document (status, content type,
headers, body schema).

The coordinator has no agent: the jobs Schemathesis submits are planned and
stored but never run, so a generated giant matrix product costs nothing.
Left out: the event stream (it never ends), the agent protocol (its
calls need an agent's credential, which the admin token is not), and
`/v1/modules` (Schemathesis cannot make the upload's `application/wasm`
body; the wasm tests send real and hostile modules)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from conftest import _bin, _wait_for, stop

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)


@pytest.fixture(scope="module")
def lone_coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("schemathesis-coord")
    log = d / "coordinator.log"
    coord = subprocess.Popen(
        [str(_bin("musketeer-coordinator")), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(d)],
        stdin=subprocess.DEVNULL,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=dict(os.environ, MUSKETEER_LOG="warn"),
    )
    try:
        _wait_for(d / "url", coord, log)
        yield d
    finally:
        stop(coord)


def test_generated_requests_find_no_5xx_and_no_mismatch(lone_coordinator: Path, tmp_path: Path) -> None:
    d = lone_coordinator
    url = (d / "url").read_text().strip()
    token = (d / "admin.token").read_text().strip()
    st = Path(sys.executable).parent / "schemathesis"
    cmd = [
        str(st),
        "--no-color",
        "run",
        f"{url}/v1/openapi.json",
        "--checks",
        CHECKS,
        "--header",
        f"Authorization: Bearer {token}",
        "--tls-verify",
        str(d / "ca.pem"),
        "--max-examples",
        "15",
        "--exclude-path",
        "/dashboard/events",
        "--exclude-path",
        "/v1/modules",
        "--exclude-path-regex",
        "^/v1/agent/",
        "--seed",
        "20261201",
        "--request-timeout",
        "30",
    ]
    # In a directory of its own: Schemathesis keeps its example database
    # in `.schemathesis/` under the working directory.
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    report = out.stdout + out.stderr
    (Path(__file__).resolve().parents[3] / "target" / "schemathesis.log").write_text(report)
    assert out.returncode == 0, report
    assert "passed" in report.lower(), report
