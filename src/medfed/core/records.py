"""Frozen records: job specs, tasks, results, rounds. Values only; parsing lives in ``config``."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field, replace

from medfed.core.errors import ConfigError, Refusal
from medfed.core.params import Parameters
from medfed.core.selectors import DatasetSelector

#: A hyper-parameter or option value that may travel in a task (no nested structures).
Scalar = bool | int | float | str
#: A job's purpose when its spec names none (sites' policies and approvals compare purposes).
DEFAULT_PURPOSE = "research"


class JobState(enum.StrEnum):
    """Life cycle of a job in the coordinator's store."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


class TaskKind(enum.StrEnum):
    """What a node is asked to do with the parameters it receives."""

    FIT = "fit"  # evaluate the received model on the local test split, then train locally
    EVALUATE = "evaluate"  # evaluate only (the final model)
    # secure aggregation (SecAgg+) stages around a fit: keys, key shares, then (after the fit) unmasking
    SECAGG_KEYS = "secagg_keys"
    SECAGG_SHARES = "secagg_shares"
    SECAGG_UNMASK = "secagg_unmask"
    # federated analytics: one query (``TaskMessage.payload``: the query's JSON), answered under the site's policy
    QUERY = "query"
    # federated synthesis: fit a DP synthesizer to the site's rows, release synthetic rows under its policy
    SYNTHESIZE = "synthesize"

    @property
    def secagg_stage(self) -> bool:
        """True for the secure-aggregation stages that carry no model."""
        return self in (TaskKind.SECAGG_KEYS, TaskKind.SECAGG_SHARES, TaskKind.SECAGG_UNMASK)


class ResultStatus(enum.StrEnum):
    OK = "ok"
    ERROR = "error"


class Role(enum.StrEnum):
    """Roles carried in certificates (the OU of the subject)."""

    NODE = "node"
    COORDINATOR = "coordinator"
    RESEARCHER = "researcher"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategySpec:
    """Which aggregation strategy a job uses and its server-side options."""

    name: str = "fedavg"
    options: dict[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundPolicy:
    """Stragglers and dropouts: how long a round waits and how many results it needs."""

    min_nodes: int = 1
    deadline_s: float = 120.0
    max_round_retries: int = 3

    def __post_init__(self) -> None:
        if self.min_nodes < 1:
            raise ConfigError(f"rounds.min_nodes must be >= 1, got {self.min_nodes!r}")
        if self.deadline_s <= 0:
            raise ConfigError(f"rounds.deadline_s must be > 0, got {self.deadline_s!r}")
        if self.max_round_retries < 0:
            raise ConfigError(f"rounds.max_round_retries must be >= 0, got {self.max_round_retries!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacySpec:
    """Sample-level DP-SGD asked for by a job: each site clips every example's gradient to
    ``clip_norm`` and adds Gaussian noise of std ``noise_multiplier * clip_norm`` per step.

    What it costs each site (ε at ``delta``) is computed *at the site*, from its own data size,
    and charged to that site's budget ledger before the job touches the data.

    Metrics computed on a site's data are releases too: in a DP job a site sends only its test
    accuracy, noised by the Laplace mechanism at ``eval_epsilon`` per release (one per round and
    one for the final model, charged to the ledger as well), and its example counts; loss, AUC
    and training metrics stay at the site. ``eval_epsilon = 0`` releases no accuracy at all.
    """

    noise_multiplier: float
    clip_norm: float = 1.0
    delta: float = 1e-5
    eval_epsilon: float = 0.05

    def __post_init__(self) -> None:
        problems = []
        if not self.noise_multiplier > 0:
            problems.append(f"privacy.noise_multiplier must be > 0, got {self.noise_multiplier!r}")
        if not self.clip_norm > 0:
            problems.append(f"privacy.clip_norm must be > 0, got {self.clip_norm!r}")
        if not 0 < self.delta < 1:
            problems.append(f"privacy.delta must be in (0, 1), got {self.delta!r}")
        if not self.eval_epsilon >= 0:
            problems.append(f"privacy.eval_epsilon must be >= 0, got {self.eval_epsilon!r}")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class RobustSpec:
    """Robust aggregation and anomaly detection asked for by a job (the ``[robust]`` table).

    ``rule`` names a robust rule (``None``: the strategy gets the plain weighted mean) and
    ``options`` are its options, both as written in the job file: core knows no rules, so the
    coordinator checks names, values and the tolerance of ``options["byzantine"]`` malicious nodes
    at submission. Either one makes the coordinator keep every site's update of a round.
    """

    rule: str | None = None
    options: dict[str, Scalar] = field(default_factory=dict)
    detect_anomalies: bool = True

    def __post_init__(self) -> None:
        if self.rule is None and self.options:
            raise ConfigError(f"robust options {sorted(self.options)} need robust.rule")

    @property
    def keeps_updates(self) -> bool:
        """True when the coordinator must keep every site's update of a round (O(nodes × model))."""
        return self.rule is not None or self.detect_anomalies


@dataclass(frozen=True, slots=True, kw_only=True)
class SecureAggregationSpec:
    """Secure aggregation (SecAgg+) asked for by a job (the ``[secure_aggregation]`` table).

    Each node sends its contribution (its example-weighted update, or its DP-FedAvg contribution)
    quantised into integers mod ``2**bits`` and masked; the coordinator learns only the sum.

    Attributes
    ----------
    threshold
        Shares needed to remove a node's masks; 0 picks the smallest safe value (more than half of
        each node's share holders). Fewer surviving nodes than this fail the round.
    clip_range
        Every element of a contribution is clipped to ``[-clip_range, clip_range]`` before
        quantisation (model deltas, not models, are summed, so this bounds one round's step).
    bits
        Width of the integers (2..32).
    max_weight
        Example count that weighs 1.0: node ``i`` contributes ``w·Δ`` and ``w`` with
        ``w = min(n_i / max_weight, 1)``, so example counts stay inside the sum too.
    neighbours
        0: every node masks with every other (SecAgg); k > 0: a random k-regular (Harary) graph
        (SecAgg+, O(k) instead of O(n) work per node).
    """

    threshold: int = 0
    clip_range: float = 8.0
    bits: int = 32
    max_weight: int = 10_000
    neighbours: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.threshold < 0:
            problems.append(f"secure_aggregation.threshold must be >= 0, got {self.threshold!r}")
        if not 8 <= self.bits <= 32:
            problems.append(f"secure_aggregation.bits must be in 8..32, got {self.bits!r}")
        if self.max_weight < 1:
            problems.append(f"secure_aggregation.max_weight must be >= 1, got {self.max_weight!r}")
        if self.neighbours < 0 or self.neighbours == 1 or self.neighbours % 2:
            problems.append(
                f"secure_aggregation.neighbours must be 0 (all) or an even number >= 2, got {self.neighbours!r}"
            )
        if not self.clip_range >= 1:
            problems.append(
                f"secure_aggregation.clip_range must be >= 1 (a contribution's weight lies in [0, 1]), "
                f"got {self.clip_range!r}"
            )
        if problems:
            raise ConfigError("; ".join(problems))


#: Who adds client-level DP noise (``[client_dp] noise``): the coordinator, or each node a share.
CLIENT_DP_NOISE = ("central", "distributed")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientDPSpec:
    """Client-level DP-FedAvg asked for by a job (the ``[client_dp]`` table; McMahan et al. 2018).

    Each node clips its model update to ``clip_norm`` (adaptive: Andrew et al. 2021) and the sum
    gets Gaussian noise of std ``noise_multiplier · clip_norm``, from the coordinator (central) or
    in shares from the nodes (distributed: needs secure aggregation, so nobody sees a share
    alone). ``expected_nodes`` is the fixed denominator m. Each site charges its ledger the ε of
    ``rounds`` Gaussian releases at this noise multiplier (every site takes part in every round).
    A site's metrics are releases about the whole site too: only its test accuracy leaves, with
    Laplace noise of scale ``1 / eval_epsilon`` in accuracy units (the whole test set may change),
    charged to the ledger; ``eval_epsilon = 0`` (the default) releases none.
    """

    noise_multiplier: float
    clip_norm: float = 1.0
    expected_nodes: int = 1
    noise: str = "central"
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    delta: float = 1e-5
    eval_epsilon: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if not self.noise_multiplier > 0:
            problems.append(f"client_dp.noise_multiplier must be > 0, got {self.noise_multiplier!r}")
        if not self.clip_norm > 0:
            problems.append(f"client_dp.clip_norm must be > 0, got {self.clip_norm!r}")
        if self.expected_nodes < 1:
            problems.append(f"client_dp.expected_nodes must be >= 1, got {self.expected_nodes!r}")
        if self.noise not in CLIENT_DP_NOISE:
            problems.append(f"client_dp.noise must be one of {list(CLIENT_DP_NOISE)}, got {self.noise!r}")
        if not 0 < self.target_quantile < 1:
            problems.append(f"client_dp.target_quantile must be in (0, 1), got {self.target_quantile!r}")
        if not self.clip_learning_rate > 0:
            problems.append(f"client_dp.clip_learning_rate must be > 0, got {self.clip_learning_rate!r}")
        if not 0 < self.delta < 1:
            problems.append(f"client_dp.delta must be in (0, 1), got {self.delta!r}")
        if not self.eval_epsilon >= 0:
            problems.append(f"client_dp.eval_epsilon must be >= 0, got {self.eval_epsilon!r}")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """A declarative job: which task on which dataset, how many rounds, which strategy.

    No code travels: ``task`` names an entry point in group ``medfed.tasks`` installed at each site.
    """

    name: str
    task: str
    dataset: str  # a DatasetSelector's label: a name, or "tags:a,b" (see medfed.core.selectors)
    rounds: int
    seed: int = 0
    purpose: str = DEFAULT_PURPOSE  # what the job is for: sites' policies and approvals check it
    task_options: dict[str, Scalar] = field(default_factory=dict)
    strategy: StrategySpec = field(default_factory=StrategySpec)
    policy: RoundPolicy = field(default_factory=RoundPolicy)
    sites: tuple[str, ...] = ()  # empty: every connected site
    privacy: PrivacySpec | None = None
    robust: RobustSpec | None = None
    secure_aggregation: SecureAggregationSpec | None = None
    client_dp: ClientDPSpec | None = None
    #: a federated query (the ``[query]`` table as JSON text; checked by the coordinator, which knows
    #: the analytics layer): the job runs that query instead of training ``task``
    query: str | None = None
    #: federated synthesis (the ``[synthesis]`` table as JSON text; checked by the coordinator): each
    #: site releases DP synthetic rows instead of training ``task``
    synthesis: str | None = None
    source: str = ""  # the TOML text it was parsed from (hashed, stored, audited)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"job.rounds must be >= 1, got {self.rounds!r}")
        if not self.name:
            raise ConfigError("job.name must not be empty")
        if self.privacy is not None and self.client_dp is not None:
            raise ConfigError(
                "[privacy] (patient-level DP-SGD) and [client_dp] (site-level DP-FedAvg) cannot combine in one "
                "job: pick one privacy unit"
            )
        if self.client_dp is not None and self.client_dp.noise == "distributed" and self.secure_aggregation is None:
            raise ConfigError(
                "client_dp.noise = 'distributed' needs [secure_aggregation]: without it the coordinator sees each "
                "node's contribution with only its share of the noise"
            )

    @property
    def sums_contributions(self) -> bool:
        """True when nodes send contributions that the coordinator only sums (secure aggregation
        or client-level DP) instead of models it averages."""
        return self.secure_aggregation is not None or self.client_dp is not None

    @property
    def selector(self) -> DatasetSelector:
        """What ``dataset`` selects: a name, or tags each site resolves against its own datasets."""
        return DatasetSelector.from_label(self.dataset)

    @property
    def spec_hash(self) -> str:
        """SHA-256 of the spec's source text: what approvals and audit refer to."""
        return hashlib.sha256(self.source.encode()).hexdigest()

    def replace(self, **changes: object) -> JobSpec:
        return replace(self, **changes)  # type: ignore[arg-type]  # dataclasses.replace is untyped


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskMessage:
    """What the coordinator sends a node for one round."""

    task_id: str
    job_id: str
    round: int
    kind: TaskKind
    task: str
    dataset: str
    seed: int
    config: dict[str, Scalar]
    parameters: Parameters
    job_rounds: int = 0  # fit rounds in the whole job (what a site's privacy reservation covers)
    privacy: PrivacySpec | None = None
    payload: bytes = b""  # secure-aggregation stage message (schema-checked JSON), else empty
    spec_toml: str = ""  # the job's spec text: a site derives policy facts from it, not from labels
    owner: str = ""  # the submitting user, from the coordinator's authenticated record
    model_signature: bytes = b""  # the coordinator's signature of ``parameters`` (JSON), else empty


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultMessage:
    """What a node sends back: new parameters and metrics, or an error as a value."""

    task_id: str
    job_id: str
    round: int
    site: str
    status: ResultStatus
    num_examples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    parameters: Parameters | None = None
    error_kind: str = ""
    error_message: str = ""
    payload: bytes = b""  # secure-aggregation stage message (schema-checked JSON), else empty
    refusal: Refusal | None = None  # why the site's governance refused the task (None: not a refusal, or an old node)
    refusal_spec: str = ""  # the refused job spec's SHA-256 (hex), when the refusal concerns one

    @property
    def ok(self) -> bool:
        return self.status is ResultStatus.OK


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteMetrics:
    """Metrics one site reported in one round."""

    site: str
    num_examples: int
    metrics: dict[str, float]
    error: str = ""
    refusal: Refusal | None = None  # why the site's governance refused the task (from its result)
    refusal_spec: str = ""  # the refused spec's SHA-256 (hex), when the refusal concerns one


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundRecord:
    """What the store keeps about a finished round."""

    job_id: str
    round: int
    kind: TaskKind
    sites: tuple[SiteMetrics, ...]
    aggregated: dict[str, float]
    duration_s: float
