"""Real sites for the analytics tests: NCCTG lung split by institution, Fed-Heart-Disease by hospital.

The in-memory ``ask`` runs the real node-side path (:func:`medfed.analytics.answer`, with each
site's own policy and persisted history) for every site; only the network is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
from lifelines.datasets import load_lung

from medfed.analytics import AnswerHistory, DisclosurePolicy, QuerySpec, SiteAnswer, answer
from medfed.core.errors import PermissionDenied
from medfed.data.heart import FEATURES, load_fed_heart_disease

#: A policy that lets every lung institution (the smallest has 2 patients) answer, for exactness.
OPEN = DisclosurePolicy(min_cell=1, min_cohort=1, differencing_threshold=1)


@dataclass
class Federation:
    """Sites, their policies and histories; ``ask`` answers at every site, skipping refusals."""

    sites: Mapping[str, pd.DataFrame]
    policy: DisclosurePolicy
    seed: int = 0
    histories: dict[str, AnswerHistory] = field(default_factory=dict)
    refusals: dict[str, str] = field(default_factory=dict)
    asked: int = 0

    def __post_init__(self) -> None:
        self.histories = {s: AnswerHistory() for s in self.sites}
        self.rng = np.random.default_rng(self.seed)

    def ask(self, spec: QuerySpec) -> dict[str, SiteAnswer]:
        # Every query crosses the wire as JSON, as it will over gRPC.
        spec = QuerySpec.from_json(spec.to_json())
        self.asked += 1
        out = {}
        for site, table in self.sites.items():
            try:
                out[site], self.histories[site] = answer(spec, table, self.policy, self.histories[site], rng=self.rng)
            except PermissionDenied as exc:
                self.refusals[site] = str(exc)
        return out


FederationFactory = Callable[..., Federation]


@pytest.fixture(scope="session")
def lung() -> pd.DataFrame:
    return load_lung().dropna(subset=["inst"]).reset_index(drop=True)


@pytest.fixture(scope="session")
def lung_sites(lung: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {f"inst{int(k):02d}": g.drop(columns="inst").reset_index(drop=True) for k, g in lung.groupby("inst")}


@pytest.fixture(scope="session")
def heart_sites() -> dict[str, pd.DataFrame]:
    out = {}
    for site, data in load_fed_heart_disease().items():
        frame = pd.DataFrame(np.vstack([data.x_train, data.x_test]).astype(np.float64), columns=list(FEATURES))
        frame["label"] = np.concatenate([data.y_train, data.y_test]).astype(np.float64)
        out[site] = frame
    return out


@pytest.fixture
def federation() -> FederationFactory:
    def make(sites: Mapping[str, pd.DataFrame], policy: DisclosurePolicy = OPEN, seed: int = 0) -> Federation:
        return Federation(sites=sites, policy=policy, seed=seed)

    return make
