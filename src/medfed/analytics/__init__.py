"""medfed.analytics: federated statistics that equal the pooled answer, under disclosure control.

A pure layer (numpy, scipy, pandas; imports only :mod:`medfed.core`). The seam to the network is
one callable, ``ask: QuerySpec -> Mapping[site, SiteAnswer]``:

* node side: :func:`answer` (policy, suppression, differencing, DP) and :func:`epsilon_cost`;
* coordinator side: :func:`combine` for one-shot queries, and the iterative drivers
  :func:`fit_glm`, :func:`fit_cox` and :func:`kaplan_meier`.

See ``docs/analytics.md``.
"""

from medfed.analytics.answer import SiteAnswer, answer
from medfed.analytics.combine import DescribeResult, QueryResult, TableResult, combine, histogram_quantiles
from medfed.analytics.models import FitOptions, RegressionResult, fit_cox, fit_glm
from medfed.analytics.policy import AnswerHistory, CohortRecord, DisclosurePolicy, epsilon_cost, gaussian_sigma
from medfed.analytics.spec import Criterion, DPRequest, Family, Mechanism, Op, QueryKind, QuerySpec
from medfed.analytics.survival import KMCurve, KMResult, LogRankResult, kaplan_meier

__all__ = [
    "AnswerHistory",
    "CohortRecord",
    "Criterion",
    "DPRequest",
    "DescribeResult",
    "DisclosurePolicy",
    "Family",
    "FitOptions",
    "KMCurve",
    "KMResult",
    "LogRankResult",
    "Mechanism",
    "Op",
    "QueryKind",
    "QueryResult",
    "QuerySpec",
    "RegressionResult",
    "SiteAnswer",
    "TableResult",
    "answer",
    "combine",
    "epsilon_cost",
    "fit_cox",
    "fit_glm",
    "gaussian_sigma",
    "histogram_quantiles",
    "kaplan_meier",
]
