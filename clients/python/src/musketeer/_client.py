"""The client: one `requests.Session` per cluster, JSON errors as exceptions."""

from __future__ import annotations

import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Dict, Iterable, List, Mapping, Optional, Union

import requests

#: States after which a job never changes again.
FINISHED_STATES = frozenset({"succeeded", "failed", "cancelled", "expired"})

#: How a streamed word-count upload is read from a file: big enough that
#: the per-call cost vanishes, small enough to stay out of the way.
UPLOAD_CHUNK_BYTES = 1 << 20


class MusketeerError(Exception):
    """An error the coordinator answered with: `{"error":{"code","message"}}`."""

    def __init__(self, status: int, code: str, message: str, state: Optional[str] = None):
        super().__init__(f"{status} {code}: {message}")
        #: The HTTP status.
        self.status = status
        #: The stable, machine-readable code (`not_found`, `invalid_job`, ...).
        self.code = code
        #: What went wrong and what to do, for a person.
        self.message = message
        #: The job's state, on a result asked for too early.
        self.state = state


class JobFailed(Exception):
    """A job ended in a state other than `succeeded`."""

    def __init__(self, status: "JobStatus"):
        reason = f": {status.error}" if status.error else ""
        super().__init__(f"job {status.id} {status.state}{reason}")
        #: The job's last status.
        self.status = status


@dataclass(frozen=True)
class Progress:
    """How far a job has come, in tasks."""

    total: int
    done: int
    failed: int


@dataclass(frozen=True)
class JobStatus:
    """`GET /v1/jobs/{id}` as a value."""

    id: str
    kernel: str
    state: str
    queue: str
    priority: int
    progress: Progress
    error: Optional[str]
    created_ms: int
    started_ms: Optional[int]
    finished_ms: Optional[int]

    @property
    def finished(self) -> bool:
        """Whether the job will never change again."""
        return self.state in FINISHED_STATES

    @staticmethod
    def from_json(v: Mapping[str, Any]) -> "JobStatus":
        """Reads the coordinator's JSON."""
        p = v.get("progress") or {}
        return JobStatus(
            id=v["id"],
            kernel=v.get("kernel", ""),
            state=v["state"],
            queue=v.get("queue", "default"),
            priority=int(v.get("priority", 0)),
            progress=Progress(
                total=int(p.get("total", 0)),
                done=int(p.get("done", 0)),
                failed=int(p.get("failed", 0)),
            ),
            error=v.get("error"),
            created_ms=int(v.get("created_ms", 0)),
            started_ms=v.get("started_ms"),
            finished_ms=v.get("finished_ms"),
        )


class Cluster:
    """One coordinator, reached over HTTPS with a bearer token."""

    def __init__(
        self,
        url: str,
        token: str,
        ca: Union[str, os.PathLike, bool, None] = None,
        timeout: float = 60.0,
    ):
        """`ca`: the PEM file of the cluster's CA (its data directory's
        `ca.pem`), `True` for the system's roots, `None` for the
        `MUSKETEER_CA` variable or else the system's roots."""
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        if ca is None:
            ca = os.environ.get("MUSKETEER_CA") or True
        # Given with every request: a session's `verify` loses to
        # REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE, a request's does not.
        self._verify: Union[str, bool] = str(ca) if not isinstance(ca, bool) else ca

    @classmethod
    def from_data_dir(cls, data_dir: Union[str, os.PathLike], **kwargs: Any) -> "Cluster":
        """The cluster whose coordinator keeps its files in `data_dir`
        (`url`, `admin.token`, `ca.pem`), as the admin CLI defaults to."""
        d = Path(data_dir)
        return cls(
            (d / "url").read_text().strip(),
            (d / "admin.token").read_text().strip(),
            ca=d / "ca.pem",
            **kwargs,
        )

    @classmethod
    def from_env(cls, **kwargs: Any) -> "Cluster":
        """`MUSKETEER_URL`, `MUSKETEER_ADMIN_TOKEN` and `MUSKETEER_CA`, as the CLI reads them."""
        return cls(os.environ["MUSKETEER_URL"], os.environ["MUSKETEER_ADMIN_TOKEN"], **kwargs)

    def close(self) -> None:
        """Closes the connection pool."""
        self._session.close()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the HTTP layer -------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        kwargs.setdefault("verify", self._verify)
        resp = self._session.request(method, self.url + path, **kwargs)
        if resp.status_code >= 400:
            raise _error_of(resp)
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # -- jobs -----------------------------------------------------------

    def submit(self, job: Optional[Mapping[str, Any]] = None, **fields: Any) -> "Job":
        """Submits a job body (`{"kernel": ..., ...}`, or the same as keyword
        arguments) and returns its handle."""
        body = dict(job or {}, **fields)
        v = self._json("POST", "/v1/jobs", json=body)
        return Job(self, v["id"], tasks=v.get("tasks"))

    def submit_wordcount(
        self,
        text: Union[str, bytes, IO[bytes], Iterable[bytes]],
        **options: Any,
    ) -> "Job":
        """Streams a text to `POST /v1/jobs/wordcount`: a `str`, `bytes`, a
        binary file (read in chunks, never whole) or an iterable of chunks.
        Options (`min_len`, `top`, `case_sensitive`, `split`, `queue`, ...)
        become query parameters."""
        if isinstance(text, str):
            data: Any = text.encode("utf-8")
        elif isinstance(text, (bytes, bytearray, memoryview)):
            data = bytes(text)
        elif hasattr(text, "read"):
            data = iter(lambda: text.read(UPLOAD_CHUNK_BYTES), b"")  # type: ignore[union-attr]
        else:
            data = text
        params = {k: _query_value(v) for k, v in options.items()}
        v = self._json(
            "POST",
            "/v1/jobs/wordcount",
            params=params,
            data=data,
            headers={"Content-Type": "text/plain; charset=utf-8"},
            # An upload of a large text takes what it takes.
            timeout=None,
        )
        return Job(self, v["id"], tasks=v.get("tasks"))

    def job(self, job_id: str) -> "Job":
        """The handle of a job submitted earlier."""
        return Job(self, job_id)

    def jobs(self, limit: int = 100) -> List[JobStatus]:
        """The newest jobs first."""
        v = self._json("GET", "/v1/jobs", params={"limit": limit})
        return [JobStatus.from_json(j) for j in v["jobs"]]

    # -- modules --------------------------------------------------------

    def push_module(self, module: Union[bytes, str, os.PathLike]) -> str:
        """Uploads a WebAssembly module (its bytes, or a path to a `.wasm`
        file) and returns its id, `sha256:<hex>`, to name in a wasm job."""
        if isinstance(module, (bytes, bytearray, memoryview)):
            data = bytes(module)
        else:
            with open(module, "rb") as f:
                data = f.read()
        v = self._json(
            "POST", "/v1/modules", data=data, headers={"Content-Type": "application/wasm"}
        )
        return str(v["id"])

    def modules(self) -> List[Dict[str, Any]]:
        """Every stored module (`id`, `size`, `created_ms`, `has_reduce`,
        `in_use`), oldest first."""
        return list(self._json("GET", "/v1/modules")["modules"])

    def delete_module(self, module_id: str) -> None:
        """Deletes a module; `MusketeerError` 409 `module_in_use` while an
        unfinished job uses it."""
        self._request("DELETE", f"/v1/modules/{module_id}")

    # -- agents ---------------------------------------------------------

    def agents(self) -> List[Dict[str, Any]]:
        """Every enrolled agent, as `GET /v1/agents` gives it."""
        return list(self._json("GET", "/v1/agents")["agents"])

    def create_token(self) -> str:
        """A new join token for agents."""
        return str(self._json("POST", "/v1/tokens")["token"])


class Job:
    """The handle of one job, as Celery's `AsyncResult`."""

    def __init__(self, cluster: Cluster, job_id: str, tasks: Optional[int] = None):
        #: The cluster it runs on.
        self.cluster = cluster
        #: Its id.
        self.id = job_id
        #: How many tasks it was split into, when it was submitted here.
        self.tasks = tasks

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def status(self) -> JobStatus:
        """Its state and progress now."""
        return JobStatus.from_json(self.cluster._json("GET", f"/v1/jobs/{self.id}"))

    def wait(
        self,
        timeout: Optional[float] = None,
        progress: bool = False,
        interval: float = 0.1,
    ) -> JobStatus:
        """Waits until the job finishes and returns its status; raises
        `JobFailed` unless it succeeded, `TimeoutError` past `timeout`
        seconds. `progress=True` draws a bar on standard error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(interval, 0.02)
        while True:
            status = self.status()
            if progress:
                _draw(status)
            if status.finished:
                if progress:
                    sys.stderr.write("\n")
                if status.state != "succeeded":
                    raise JobFailed(status)
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {self.id} is still {status.state} after {timeout} s "
                    f"({status.progress.done} of {status.progress.total} tasks done)"
                )
            time.sleep(delay)
            # Short jobs answer fast; long ones are not polled hard.
            delay = min(delay * 2, interval)

    def result(self, timeout: Optional[float] = None) -> Any:
        """Waits, then returns the JSON result."""
        self.wait(timeout)
        return self.cluster._json("GET", f"/v1/jobs/{self.id}/result")

    def result_bytes(self, format: str, timeout: Optional[float] = None) -> bytes:
        """Waits, then returns the result in another format (`npy`, `tsv`)."""
        self.wait(timeout)
        return self.cluster._request(
            "GET", f"/v1/jobs/{self.id}/result", params={"format": format}
        ).content

    def array(self, timeout: Optional[float] = None) -> Any:
        """A matmul result as a NumPy array, read from its `.npy` form
        without a JSON detour (needs numpy)."""
        import numpy  # an optional dependency: only this method needs it

        return numpy.load(io.BytesIO(self.result_bytes("npy", timeout)), allow_pickle=False)

    def cancel(self) -> JobStatus:
        """Cancels it; raises `MusketeerError` (409) if it already finished."""
        return JobStatus.from_json(self.cluster._json("DELETE", f"/v1/jobs/{self.id}"))

    def retry(self) -> JobStatus:
        """Runs a failed job's failed tasks again (its done ones are kept);
        raises `MusketeerError` (409 `job_not_retryable`, saying what to do)
        if it is not failed or no longer keeps its inputs (24 h)."""
        return JobStatus.from_json(self.cluster._json("POST", f"/v1/jobs/{self.id}/retry"))


def _error_of(resp: requests.Response) -> MusketeerError:
    """The coordinator's JSON error, or the bare status if it is not JSON."""
    try:
        v = resp.json()
        e = v["error"]
        return MusketeerError(resp.status_code, e["code"], e["message"], v.get("state"))
    except (ValueError, KeyError, TypeError):
        return MusketeerError(resp.status_code, "http_error", resp.text[:500])


def _query_value(v: Any) -> str:
    """Query parameters as the coordinator parses them (`true`, not `True`)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _draw(status: JobStatus) -> None:
    """One line of progress, redrawn in place."""
    p = status.progress
    width = 30
    filled = width * p.done // p.total if p.total else 0
    bar = "#" * filled + "-" * (width - filled)
    failed = f", {p.failed} failed" if p.failed else ""
    sys.stderr.write(f"\r{status.id} [{bar}] {p.done}/{p.total} {status.state}{failed}")
    sys.stderr.flush()
