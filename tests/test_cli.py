"""The command line's own behaviour: exit codes, clear errors, the privacy calculator."""

import pytest

from medfed.cli.main import main
from medfed.privacy.accounting import epsilon


def test_privacy_epsilon_prints_the_accountants_value(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["privacy", "epsilon", "--rows", "100", "--batch", "1", "--steps", "1000", "--noise", "1.1",
                 "--accountant", "rdp"])  # fmt: skip
    out = capsys.readouterr().out
    expected = epsilon(noise_multiplier=1.1, sampling_rate=0.01, steps=1000, delta=1e-5, method="rdp")
    assert code == 0 and f"ε = {expected:.4f}" in out and abs(expected - 1.712) < 0.01


def test_privacy_calibrate_meets_the_target(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["privacy", "calibrate", "--rows", "200", "--batch", "4", "--steps", "300", "--target-epsilon", "2",
                 "--accountant", "rdp"])  # fmt: skip
    sigma = float(capsys.readouterr().out.split()[2])
    assert code == 0
    assert epsilon(noise_multiplier=sigma, sampling_rate=0.02, steps=300, delta=1e-5, method="rdp") <= 2.0


def test_a_missing_job_file_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    code = main(["provision", "/nonexistent/plan.toml", "--out", "/tmp/never-made-by-medfed"])
    assert code == 1 and "no such file" in capsys.readouterr().err


def test_bad_rows_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["privacy", "epsilon", "--rows", "0", "--batch", "1", "--steps", "1", "--noise", "1"])
    assert code == 1 and "--rows and --batch must be > 0" in capsys.readouterr().err
