"""A typed client for a Musketeer cluster's HTTP API.

`Cluster` talks to one coordinator; `Job` is the handle of one submitted
job (Celery's `AsyncResult`): `wait()`, `result()`, `array()`, `cancel()`.
"""

from ._client import (
    Cluster,
    Job,
    JobFailed,
    JobStatus,
    MusketeerError,
    Progress,
)

__all__ = ["Cluster", "Job", "JobFailed", "JobStatus", "MusketeerError", "Progress"]
