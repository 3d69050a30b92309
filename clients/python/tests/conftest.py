"""A real coordinator and agent for the client's tests: the workspace's
binaries (`cargo build --workspace --bins`, or `MUSKETEER_BIN_DIR`) on a
free loopback port, each in a temporary directory."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

from musketeer import Cluster

ROOT = Path(__file__).resolve().parents[3]


def _bin(name: str) -> Path:
    d = Path(os.environ.get("MUSKETEER_BIN_DIR", ROOT / "target" / "debug"))
    path = d / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `cargo build --workspace --bins` first")
    return path


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, seconds: float = 30) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > end:
            pytest.fail(f"{path} did not appear:\n{log.read_text()}")
        time.sleep(0.02)


def start_agent(data_dir: Path, state: Path, *extra: str) -> subprocess.Popen:
    """An agent joined to the coordinator of `data_dir`, its state in `state`."""
    return subprocess.Popen(
        [
            str(_bin("musketeer")),
            "join",
            (data_dir / "url").read_text().strip(),
            "--token",
            (data_dir / "join.token").read_text().strip(),
            "--state-dir",
            str(state),
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stdout=(state / "agent.log").open("ab"),
        stderr=subprocess.STDOUT,
        env=dict(os.environ, MUSKETEER_LOG="info", MUSKETEER_YIELD_TO_HOST_PERCENT="off"),
    )


def stop(proc: Optional[subprocess.Popen]) -> None:
    """Stops a process the tests started: SIGTERM, then SIGKILL after 10 s."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A coordinator's data directory, with the coordinator and one agent running."""
    d = tmp_path_factory.mktemp("coord")
    log = d / "coordinator.log"
    env = dict(os.environ, MUSKETEER_LOG="info")
    coord = subprocess.Popen(
        [str(_bin("musketeer-coordinator")), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(d)],
        stdin=subprocess.DEVNULL,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    agent = None
    try:
        _wait_for(d / "url", coord, log)
        agent = start_agent(d, tmp_path_factory.mktemp("agent"), "--cpus", "2")
        yield d
    finally:
        stop(agent)
        stop(coord)


@pytest.fixture()
def cluster(data_dir: Path) -> Iterator[Cluster]:
    with Cluster.from_data_dir(data_dir) as c:
        yield c
