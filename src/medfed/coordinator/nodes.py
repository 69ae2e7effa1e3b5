"""Who is connected, the per-site task mailboxes nodes long-poll, and what the federation's catalog
says about which site offers what (:func:`matching_datasets`, :func:`catalog_listing`)."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from medfed.core.errors import ValidationError
from medfed.core.records import TaskMessage
from medfed.core.selectors import DatasetSelector
from medfed.data.catalog import CatalogEntry
from medfed.transport.api import Hello

#: Bytes of catalog JSON a node may send when it registers.
MAX_CATALOG_BYTES = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    site: str
    version: str
    datasets: tuple[str, ...]
    tasks: tuple[str, ...]
    last_seen: float
    catalog: tuple[CatalogEntry, ...] = ()  # metadata of its declared datasets (coarse counts)
    cert_expires: float = 0.0  # notAfter of the certificate it registered with (epoch seconds); 0: unknown


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogListing:
    """One catalog entry as the coordinator shows it: the entry its site last reported, whether the
    site is online now, and when (epoch seconds) and how long ago it reported."""

    entry: CatalogEntry
    online: bool
    reported_at: float
    age_s: float

    @property
    def site(self) -> str:
        return self.entry.site

    def as_dict(self) -> dict[str, object]:
        return {"site": self.site, "online": self.online, "reported_at": self.reported_at, "age_s": self.age_s}


def catalog_listing(
    stored: Iterable[tuple[CatalogEntry, float]], *, online: set[str], now: float
) -> list[CatalogListing]:
    """Listings of stored ``(entry, reported_at)`` pairs, by site and dataset."""
    return sorted(
        (
            CatalogListing(entry=e, online=e.site in online, reported_at=at, age_s=max(0.0, now - at))
            for e, at in stored
        ),
        key=lambda x: (x.site, x.entry.dataset),
    )


def matching_datasets(info: NodeInfo, selector: DatasetSelector) -> tuple[str, ...]:
    """The datasets of a registered site that ``selector`` picks, as the coordinator can tell: a
    name among those it offers (a site that offers no list takes any name, as before), or the
    offered datasets whose catalog entries carry every tag. The node itself decides (it refuses
    several matches); this decides only which sites are asked."""
    if not selector.by_tag:
        return (selector.name,) if not info.datasets or selector.name in info.datasets else ()
    return tuple(
        sorted(e.dataset for e in info.catalog if e.dataset in info.datasets and selector.matches(e.dataset, e.tags))
    )


def parse_catalog(text: str, *, site: str, offered: tuple[str, ...]) -> tuple[CatalogEntry, ...]:
    """The catalog entries a node sent with its Hello: a JSON list of entries, each about one
    dataset it offers and naming itself (as its certificate does) as the site."""
    if not text:
        return ()
    where = f"catalog of site {site!r}"
    if len(text.encode()) > MAX_CATALOG_BYTES:
        raise ValidationError(f"{len(text.encode())} bytes exceed {MAX_CATALOG_BYTES}", where=where)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"not JSON: {exc}", where=where) from None
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise ValidationError("must be a JSON list of entries", where=where)
    entries = tuple(CatalogEntry.from_dict(e) for e in raw)
    problems = [f"entry {e.dataset!r} names site {e.site!r}" for e in entries if e.site != site]
    problems += [f"entry {e.dataset!r} is not a dataset the site offers" for e in entries if e.dataset not in offered]
    if problems:
        raise ValidationError(problems, where=where)
    return entries


class NodeRegistry:
    """Liveness by heartbeat and a FIFO mailbox per site, behind one condition variable.

    A node is *alive* while its last contact (register, heartbeat, poll) is younger than
    ``stale_after_s``. Waiting is event-driven: producers notify the condition.
    """

    def __init__(self, *, stale_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._nodes: dict[str, NodeInfo] = {}
        self._queues: dict[str, deque[TaskMessage]] = {}
        self.cond = threading.Condition()

    def register(
        self, site: str, hello: Hello, *, catalog: tuple[CatalogEntry, ...] = (), cert_expires: float = 0.0
    ) -> bool:
        """Record a (re-)registration; True when the site was already registered here."""
        with self.cond:
            known = site in self._nodes
            self._nodes[site] = NodeInfo(
                site=site,
                version=hello.version,
                datasets=hello.datasets,
                tasks=hello.tasks,
                last_seen=self._clock(),
                catalog=catalog,
                cert_expires=cert_expires,
            )
            self._queues.setdefault(site, deque())
            self.cond.notify_all()
            return known

    def queued(self, site: str) -> set[str]:
        """Ids of the tasks waiting in ``site``'s mailbox (not picked up yet)."""
        with self.cond:
            return {t.task_id for t in self._queues.get(site, ())}

    def touch(self, site: str) -> bool:
        """Record contact; False if the site never registered with this coordinator."""
        with self.cond:
            info = self._nodes.get(site)
            if info is None:
                return False
            self._nodes[site] = replace(info, last_seen=self._clock())
            return True

    def alive(self, site: str) -> bool:
        with self.cond:
            info = self._nodes.get(site)
            return info is not None and self._clock() - info.last_seen < self.stale_after_s

    def online(self) -> list[NodeInfo]:
        with self.cond:
            now = self._clock()
            return sorted(
                (n for n in self._nodes.values() if now - n.last_seen < self.stale_after_s), key=lambda n: n.site
            )

    def contact_ages(self) -> dict[str, float]:
        """Seconds since each registered site's last contact (register, heartbeat, poll)."""
        with self.cond:
            now = self._clock()
            return {site: max(0.0, now - n.last_seen) for site, n in self._nodes.items()}

    def all(self) -> list[NodeInfo]:
        with self.cond:
            return sorted(self._nodes.values(), key=lambda n: n.site)

    def enqueue(self, site: str, task: TaskMessage) -> None:
        with self.cond:
            self._queues.setdefault(site, deque()).append(task)
            self.cond.notify_all()

    def withdraw(self, task_ids: set[str]) -> None:
        """Remove tasks that were not picked up yet (their round closed)."""
        with self.cond:
            for site, queue in self._queues.items():
                self._queues[site] = deque(t for t in queue if t.task_id not in task_ids)

    def take(self, site: str, wait_s: float) -> TaskMessage | None:
        """Next task for ``site``, waiting up to ``wait_s`` seconds for one."""
        deadline = self._clock() + wait_s
        with self.cond:
            while True:
                queue = self._queues.setdefault(site, deque())
                if queue:
                    return queue.popleft()
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return None
                self.cond.wait(remaining)

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()
