"""The client against a real coordinator and agent; every answer is checked
against a reference computed here, independently of the cluster."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from musketeer import Cluster, JobFailed, MusketeerError


def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def test_fibonacci_values_in_order(cluster: Cluster) -> None:
    job = cluster.submit({"kernel": "fibonacci", "n": [90, 0, 1, 10, 300]})
    assert job.tasks and job.tasks >= 1
    status = job.wait(timeout=120, progress=True)
    assert status.state == "succeeded"
    assert status.progress.done == status.progress.total
    assert job.result()["values"] == [str(fib(n)) for n in (90, 0, 1, 10, 300)]


def test_keyword_submit_and_lookup(cluster: Cluster) -> None:
    job = cluster.submit(kernel="factorial", n=30)
    assert job.result(timeout=120)["value"] == str(__import__("math").factorial(30))
    again = cluster.job(job.id)
    assert again.status().state == "succeeded"
    assert job.id in [j.id for j in cluster.jobs()]


def test_matmul_as_a_numpy_array(cluster: Cluster) -> None:
    a = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    b = np.arange(20, dtype=np.float64).reshape(4, 5) - 3.5
    job = cluster.submit(kernel="matmul", a=a.tolist(), b=b.tolist())
    c = job.array(timeout=120)
    assert c.shape == (3, 5) and c.dtype == np.float64
    np.testing.assert_allclose(c, a @ b, rtol=1e-12)


def test_streamed_wordcount_from_a_file(cluster: Cluster, tmp_path) -> None:
    text = ("Don't stop. The quick brown fox, the QUICK dog; don't! " * 2000).encode()
    path = tmp_path / "text.txt"
    path.write_bytes(text)
    with path.open("rb") as f:
        job = cluster.submit_wordcount(f, top=3, min_len=2)
    got = job.result(timeout=120)
    words = [w.lower() for w in re.findall(r"\w+(?:'\w+)*", text.decode()) if len(w) >= 2]
    counts = Counter(words)
    assert got["total_words"] == len(words)
    assert got["distinct"] == len(counts)
    expected = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    assert [tuple(x) for x in got["top"]] == expected


def test_errors_carry_code_and_message(cluster: Cluster) -> None:
    with pytest.raises(MusketeerError) as e:
        cluster.submit(kernel="sort", n=3)
    assert e.value.status == 422 and e.value.code == "unknown_kernel"
    assert "fibonacci" in e.value.message
    with pytest.raises(MusketeerError) as e:
        cluster.job("no-such-job").status()
    assert (e.value.status, e.value.code) == (404, "not_found")


def test_a_cancelled_job_raises_from_wait(cluster: Cluster) -> None:
    # Waits on a label no agent carries, so it is still queued when cancelled.
    job = cluster.submit(kernel="factorial", n=100, labels={"gpu": "yes"})
    assert job.cancel().state == "cancelled"
    with pytest.raises(JobFailed) as e:
        job.wait(timeout=30)
    assert e.value.status.state == "cancelled"
    # Cancelling again changes nothing; a job that succeeded cannot be cancelled.
    assert job.cancel().state == "cancelled"
    done = cluster.submit(kernel="factorial", n=10)
    done.wait(timeout=120)
    with pytest.raises(MusketeerError) as e:
        done.cancel()
    assert (e.value.status, e.value.code, e.value.state) == (409, "job_finished", "succeeded")


def test_only_a_failed_job_is_retried(cluster: Cluster) -> None:
    done = cluster.submit(kernel="factorial", n=10)
    done.wait()
    with pytest.raises(MusketeerError) as e:
        done.retry()
    assert (e.value.status, e.value.code, e.value.state) == (409, "job_not_retryable", "succeeded")
    assert "only a failed job" in e.value.message


def test_a_wrong_token_is_refused(data_dir) -> None:
    url = (data_dir / "url").read_text().strip()
    with Cluster(url, "wrong", ca=data_dir / "ca.pem") as c:
        with pytest.raises(MusketeerError) as e:
            c.jobs()
    assert e.value.status == 401


KERNELS = Path(__file__).resolve().parents[3] / "examples" / "kernels" / "target" / "wasm32-unknown-unknown" / "release"


def queens(n: int) -> int:
    def place(row: int, cols: list) -> int:
        if row == n:
            return 1
        return sum(
            place(row + 1, cols + [c])
            for c in range(n)
            if all(c != rc and abs(c - rc) != row - r for r, rc in enumerate(cols))
        )

    return place(0, [])


def test_a_wasm_module_runs_as_a_job(cluster: Cluster) -> None:
    path = KERNELS / "nqueens.wasm"
    if not path.is_file():
        pytest.fail(f"{path} is missing: scripts/test builds examples/kernels first")
    module = cluster.push_module(path)
    assert module.startswith("sha256:")
    assert cluster.push_module(path.read_bytes()) == module, "content-addressed"
    listed = {m["id"]: m for m in cluster.modules()}
    assert listed[module]["size"] == path.stat().st_size
    boards = [4, 5, 6, 8]
    job = cluster.submit(kernel="wasm", module=module, items=boards)
    assert job.result(timeout=120) == {"values": [queens(n) for n in boards]}
    cluster.delete_module(module)
    with pytest.raises(MusketeerError) as e:
        cluster.submit(kernel="wasm", module=module, items=[1])
    assert e.value.code == "unknown_module"
