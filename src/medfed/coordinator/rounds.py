"""One round in progress: which sites were asked, what each answered, the streaming mean.

A fit round of a job with robust aggregation or anomaly detection also keeps every site's
validated model (``keep_updates``): those need each individual update, so the coordinator then
holds O(nodes × model) per round instead of the streaming mean's O(model). The kept models are
the received (read-only) arrays themselves, not copies; they are released with the round.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from medfed.aggregation.mean import WeightedMean
from medfed.core.errors import ValidationError
from medfed.core.params import Parameters
from medfed.core.records import ResultMessage, SiteMetrics, TaskKind


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundKey:
    job_id: str
    round: int
    kind: TaskKind
    attempt: int


class RoundInProgress:
    """Collects results of one round; results stream into a :class:`WeightedMean`.

    With ``keep_updates``, a fit round also keeps each accepted site's model and weight in
    :attr:`kept` (for robust aggregation and anomaly detection).
    """

    def __init__(
        self,
        key: RoundKey,
        tasks: dict[str, str],
        template: Parameters | None,
        *,
        keep_updates: bool = False,
        unit_weights: bool = False,
        keep_raw: bool = False,
    ) -> None:
        self.key = key
        self.tasks = dict(tasks)  # task_id -> site
        self.mean = WeightedMean(template) if template is not None and key.kind is TaskKind.FIT else None
        self.keep_updates = keep_updates and self.mean is not None
        self.unit_weights = unit_weights  # contributions to sum (DP-FedAvg): weight 1 each, not examples
        self.keep_raw = keep_raw  # secure-aggregation stages: keep each site's accepted message
        self.kept: dict[str, tuple[Parameters, float]] = {}  # site -> (model, weight), with keep_updates
        self.raw: dict[str, ResultMessage] = {}  # site -> accepted result, with keep_raw
        self.notes: dict[str, float] = {}  # round-level figures added to the aggregated metrics
        self.results: dict[str, SiteMetrics] = {}
        self.closed = False
        self.duration_s = 0.0
        self._lock = threading.Lock()

    @property
    def sites(self) -> set[str]:
        return set(self.tasks.values())

    @property
    def pending(self) -> set[str]:
        return self.sites - set(self.results)

    @property
    def ok_sites(self) -> list[str]:
        return sorted(s for s, m in self.results.items() if not m.error)

    def accept(self, result: ResultMessage) -> None:
        """Take one site's result. A bad result is recorded as that site's error and re-raised."""
        site = result.site
        where = f"site {site!r}, job {self.key.job_id}, round {self.key.round}"
        with self._lock:
            if self.closed:
                raise ValidationError("the round already closed (result arrived after the deadline)", where=where)
            if self.tasks.get(result.task_id) != site:
                raise ValidationError(f"task {result.task_id!r} was not sent to this site", where=where)
            if site in self.results:
                raise ValidationError("a result for this round was already received", where=where)
            if not result.ok:
                self.results[site] = SiteMetrics(
                    site=site,
                    num_examples=0,
                    metrics={},
                    error=f"{result.error_kind}: {result.error_message}",
                    refusal=result.refusal,
                    refusal_spec=result.refusal_spec,
                )
                return
            try:
                self._check_ok(result, where)
            except ValidationError as exc:
                self.results[site] = SiteMetrics(site=site, num_examples=0, metrics={}, error=f"validation: {exc}")
                raise
            # A metric can be undefined on a site's data (AUC on a single-class test split is
            # NaN by contract, see medfed.learn.metrics.roc_auc): keep the site's update, record
            # only its finite metrics, so per-round means are taken over the sites that have one.
            finite = {k: float(v) for k, v in result.metrics.items() if np.isfinite(v)}
            self.results[site] = SiteMetrics(site=site, num_examples=result.num_examples, metrics=finite)
            if self.keep_raw:
                self.raw[site] = result

    def abandon(self, site: str, reason: str) -> bool:
        """Record ``site``'s task as lost (an error) if it is still pending; True if it was."""
        with self._lock:
            if self.closed or site not in self.sites or site in self.results:
                return False
            self.results[site] = SiteMetrics(site=site, num_examples=0, metrics={}, error=reason)
            return True

    def _check_ok(self, result: ResultMessage, where: str) -> None:
        if self.mean is not None:
            if result.parameters is None:
                raise ValidationError("a fit result must carry parameters", where=where)
            if result.num_examples <= 0:
                raise ValidationError(f"num_examples must be > 0, got {result.num_examples}", where=where)
            weight = 1.0 if self.unit_weights else float(result.num_examples)
            self.mean.add(result.parameters, weight, where=where)
            if self.keep_updates:  # validated by the add above: names, shapes, finite values
                self.kept[result.site] = (result.parameters, weight)

    def close(self) -> None:
        with self._lock:
            self.closed = True

    def site_metrics(self) -> tuple[SiteMetrics, ...]:
        return tuple(self.results[s] for s in sorted(self.results))

    def aggregated_metrics(self) -> dict[str, float]:
        """Per metric: ``mean/<m>`` (unweighted over sites, FLamby's metric) and ``weighted/<m>``."""
        ok = [m for m in self.results.values() if not m.error]
        names = sorted({k for m in ok for k in m.metrics})
        out: dict[str, float] = {"sites_ok": float(len(ok)), "sites_failed": float(len(self.results) - len(ok))}
        out |= self.notes
        for name in names:
            vals = [(m.metrics[name], m.num_examples) for m in ok if name in m.metrics]
            out[f"mean/{name}"] = float(np.mean([v for v, _ in vals]))
            total = sum(w for _, w in vals)
            if total > 0:
                out[f"weighted/{name}"] = float(sum(v * w for v, w in vals) / total)
        return out
