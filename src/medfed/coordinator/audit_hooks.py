"""The coordinator's tamper-evident audit trail and model signatures (HIPAA 164.312(b), (c)).

One :class:`CoordinatorAudit` per coordinator, in its state directory::

    audit.sqlite          hash-chained log (medfed.security.audit), checkpoints signed by ...
    signing.key(.pub)     ... the coordinator's Ed25519 key, which also signs every final model
                          (unless the kit's provisioned ``signing.key`` is given: ``key_path``)
    models/<job>.sig.json the final model's signature and provenance (job hash, rounds, sites)

It records what a site can check against its own log (``medfed audit participation``): every
result the coordinator accepted, with the same ``update_sha256`` the node recorded when it sent
it (:func:`result_digest` on both sides). Events carry names, ids and digests only, never rows.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from medfed.core.errors import StoreError
from medfed.core.params import Parameters
from medfed.core.records import JobSpec, ResultMessage
from medfed.crypto.signing import ModelSignature, Provenance, SigningKey, model_digest, sign_model
from medfed.security.audit import AuditLog
from medfed.security.audit_events import AuditAction, AuditEvent
from medfed.security.fsio import PRIVATE, atomic_write
from medfed.security.provision import open_signing_key

__all__ = ["CoordinatorAudit", "result_digest", "signature_path"]

log = logging.getLogger(__name__)

#: The coordinator's own name in its audit log (people and sites are named by their certificates).
COORDINATOR_ACTOR = "coordinator"


def result_digest(result: ResultMessage) -> str:
    """What both sides record as ``update_sha256``: the model digest of the parameters sent, or
    the SHA-256 of a secure-aggregation stage payload; empty for a result with neither."""
    if result.parameters is not None:
        return model_digest(result.parameters)
    if result.payload:
        return hashlib.sha256(result.payload).hexdigest()
    return ""


def signature_path(model_path: Path) -> Path:
    """``models/<job>.npz`` → ``models/<job>.sig.json``."""
    return model_path.with_name(model_path.stem + ".sig.json")


class CoordinatorAudit:
    """The coordinator's audit log and signing key; every method is safe to call from any thread."""

    def __init__(
        self,
        state_dir: Path,
        *,
        key_path: Path | None = None,
        clock: Callable[[], float] = time.time,
        checkpoint_every: int = 100,
    ) -> None:
        # the provisioned key (coordinator kit: its public half is in every kit), else one of its own
        self.key: SigningKey = open_signing_key(key_path or state_dir / "signing.key")
        self.log = AuditLog(state_dir / "audit.sqlite", signer=self.key, clock=clock, checkpoint_every=checkpoint_every)
        self._lock = threading.Lock()
        self._closed = False

    def record(self, action: AuditAction, actor: str, fields: dict[str, str | int | float | bool]) -> None:
        """Append one event. A failure to audit fails the operation (fail closed)."""
        with self._lock:
            if self._closed:
                raise StoreError(f"audit log {self.log.path} is closed")
            self.log.append(AuditEvent(action=action, actor=actor, fields=fields))

    def job_submitted(self, *, job_id: str, owner: str, spec: JobSpec) -> None:
        fields: dict[str, str | int | float | bool] = {
            "job_id": job_id, "spec_hash": spec.spec_hash, "task": spec.task, "purpose": spec.purpose,
        }  # fmt: skip
        self.record(AuditAction.JOB_SUBMITTED, owner, fields)

    def result_received(self, result: ResultMessage) -> None:
        """An accepted result of ``result.site`` (errors too: the site did answer)."""
        fields: dict[str, str | int | float | bool] = {
            "site": result.site, "job_id": result.job_id, "round": result.round, "ok": result.ok,
        }  # fmt: skip
        digest = result_digest(result)
        if digest:
            fields["update_sha256"] = digest
        self.record(AuditAction.RESULT_RECEIVED, result.site, fields)

    def model_exported(self, *, job_id: str, user: str, source: str, size: int) -> None:
        """A person downloaded ``job_id``'s final model (``size`` bytes) from ``source`` (an IP, or '')."""
        fields: dict[str, str | int | float | bool] = {"user": user, "job_id": job_id, "bytes": size}
        if source:
            fields["source"] = source
        self.record(AuditAction.DATA_EXPORTED, user, fields)

    def job_finished(self, *, job_id: str, state: str) -> None:
        self.record(AuditAction.JOB_FINISHED, COORDINATOR_ACTOR, {"job_id": job_id, "outcome": state})

    def contributors(self, job_id: str) -> tuple[str, ...]:
        """The sites whose results this log records for ``job_id`` (survives a restart)."""
        sites = {
            str(e.fields["site"])
            for e in self.log.entries()
            if e.action == AuditAction.RESULT_RECEIVED.value and e.fields.get("job_id") == job_id and e.fields.get("ok")
        }
        return tuple(sorted(sites))

    def sign_round_model(self, *, job_id: str, spec: JobSpec, aggregated: int, params: Parameters) -> bytes:
        """The signature (JSON) of the global model sent out after ``aggregated`` rounds: a node
        holding the coordinator's public key refuses a task whose model does not verify."""
        provenance = Provenance(job_id=job_id, job_hash=spec.spec_hash, rounds=aggregated, sites=())
        return sign_model(params, provenance, self.key).to_json_bytes()

    def sign_final_model(self, *, job_id: str, spec: JobSpec, params: Parameters, model_path: Path) -> ModelSignature:
        """Sign the final model with its provenance, write it next to the model, audit it."""
        provenance = Provenance(
            job_id=job_id, job_hash=spec.spec_hash, rounds=spec.rounds, sites=self.contributors(job_id)
        )
        signature = sign_model(params, provenance, self.key)
        try:
            atomic_write(signature_path(model_path), signature.to_json_bytes(), mode=PRIVATE)
        except OSError as exc:
            raise StoreError(f"cannot write {signature_path(model_path)}: {exc.strerror or exc}") from None
        self.record(
            AuditAction.MODEL_SIGNED,
            COORDINATOR_ACTOR,
            {"job_id": job_id, "model_sha256": signature.model_sha256, "fingerprint": signature.signer},
        )
        return signature

    def model_signature(self, model_path: Path) -> bytes:
        """The signature file written next to ``model_path``; empty if the model was never signed."""
        path = signature_path(model_path)
        try:
            return path.read_bytes() if path.is_file() else b""
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Sign the head (so entries after the last periodic checkpoint are anchored) and close."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.log.checkpoint()
            finally:
                self.log.close()
