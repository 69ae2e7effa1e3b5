"""The public API is what ``medfed.__all__`` lists, and every name there exists."""

import medfed

EXPECTED = {
    "AuthenticationError", "ConfigError", "DataError", "JobError", "JobSpec", "JobState", "MedfedError",
    "Parameters", "PermissionDenied", "RegistryError", "RoundPolicy", "StoreError", "StrategySpec", "TaskError",
    "TaskKind", "TransportError", "ValidationError", "__version__", "parse_job_spec",
}  # fmt: skip


def test_all_is_the_public_api() -> None:
    assert set(medfed.__all__) == EXPECTED
    for name in medfed.__all__:
        assert hasattr(medfed, name), name


def test_every_error_derives_from_medfed_error() -> None:
    for name in medfed.__all__:
        obj = getattr(medfed, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, medfed.MedfedError)
