"""The public API of medfed.privacy is what its ``__all__`` lists."""

import medfed.privacy

EXPECTED = {
    "Accountant", "AdaptiveClipping", "DPAggregator", "DPContribution", "DPFedAvg", "NoiseMode",
    "PrivacyBudget", "PrivacySpend", "add_noise", "calibrate_noise", "clip_update", "epsilon", "gaussian_noise",
    "l2_norm", "secure_rng",
}  # fmt: skip


def test_all_is_the_public_api() -> None:
    assert set(medfed.privacy.__all__) == EXPECTED
    for name in medfed.privacy.__all__:
        assert hasattr(medfed.privacy, name), name
