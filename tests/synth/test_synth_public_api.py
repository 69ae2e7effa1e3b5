"""medfed.synth's public API is what ``__all__`` says, and every name in it exists."""

from __future__ import annotations

import medfed.synth


def test_all_names_exist_and_are_sorted() -> None:
    assert medfed.synth.__all__ == sorted(medfed.synth.__all__)
    for name in medfed.synth.__all__:
        assert hasattr(medfed.synth, name), name
    assert {"fit", "SynthConfig", "Method", "prepare_release", "combine_sites", "render"} <= set(medfed.synth.__all__)
