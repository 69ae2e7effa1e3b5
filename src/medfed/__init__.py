"""medfed: federated learning and analytics for healthcare sites. Rows never leave the hospital.

The public API is what ``__all__`` lists; a test checks it.
"""

from __future__ import annotations

__version__ = "0.1.0"

from medfed.core.config import parse_job_spec
from medfed.core.errors import (
    AuthenticationError,
    ConfigError,
    DataError,
    JobError,
    MedfedError,
    PermissionDenied,
    RegistryError,
    StoreError,
    TaskError,
    TransportError,
    ValidationError,
)
from medfed.core.params import Parameters
from medfed.core.records import JobSpec, JobState, RoundPolicy, StrategySpec, TaskKind

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "DataError",
    "JobError",
    "JobSpec",
    "JobState",
    "MedfedError",
    "Parameters",
    "PermissionDenied",
    "RegistryError",
    "RoundPolicy",
    "StoreError",
    "StrategySpec",
    "TaskError",
    "TaskKind",
    "TransportError",
    "ValidationError",
    "__version__",
    "parse_job_spec",
]
