"""Jobs: the list (each person sees the jobs the role matrix lets them read), a job's page with
live round progress and charts, its downloads, and the submit form.

Rights, as in the gRPC API (:mod:`medfed.coordinator.people`): ``job.read`` on the job to see it
(a researcher: their own jobs), ``result.read`` to download its model and signature, and
``job.cancel`` to stop it (its owner, a federation admin, a site admin under break glass) and
``job.submit`` to submit (researchers). An auditor sees no submit form, and a POST from one is
refused (403, audited as ``access.denied``).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from medfed.coordinator.views import job_view
from medfed.core.errors import MedfedError
from medfed.core.records import Role
from medfed.dashboard import job_data
from medfed.dashboard.web import allowed, check_csrf, ctx, render, require
from medfed.security.authz import Action, Principal, Resource
from medfed.transport.api import Peer

NAV = ("/jobs", "Jobs")

_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: The submit form's starting text: a small Fed-Heart-Disease job (edit it before submitting).
EXAMPLE_SPEC = """[job]
name = "heart-fedavg"
task = "logistic_regression"
dataset = "heart"
rounds = 5
seed = 7

[strategy]
name = "fedavg"

[task_options]
input_dim = 13
local_steps = 20
batch_size = 16
lr = 0.05

[rounds]
min_nodes = 2
deadline_s = 60.0
"""
MAX_SPEC_BYTES = 64 * 1024


def _job_resource(request: Request, job_id: str, *, touch: bool = True) -> tuple[Resource, Any]:
    require(request, touch=touch)  # a login first: no answer (404 or not) tells a stranger which jobs exist
    if not _JOB_ID.fullmatch(job_id):
        raise HTTPException(404, f"no job with id {job_id!r}")
    row = ctx(request).coordinator.store.job(job_id)
    if row is None:
        raise HTTPException(404, f"no job with id {job_id!r}")
    return Resource.job(job_id, owner=row.owner), row


def _source(request: Request) -> str:
    """The browser's address, as the coordinator audits a caller's ``source``."""
    return request.client.host if request.client is not None else ""


def readable_jobs(request: Request, principal: Principal) -> list[dict[str, Any]]:
    """Summaries of the jobs ``principal`` may read, newest first."""
    store = ctx(request).coordinator.store
    rows = [r for r in store.jobs() if allowed(principal, Action.JOB_READ, Resource.job(r.job_id, owner=r.owner))]
    return [job_view(store, r, detail=False) for r in reversed(rows)]


def _list_page(
    request: Request, principal: Principal, *, spec: str = "", error: str = "", status: int = 200
) -> Response:
    can_submit = allowed(principal, Action.JOB_SUBMIT, Resource.federation())
    context = {"jobs": readable_jobs(request, principal), "can_submit": can_submit, "spec": spec or EXAMPLE_SPEC}
    return render(request, "jobs.html", context | {"error": error}, status_code=status)


def jobs(request: Request) -> Response:
    principal = require(request)
    return _list_page(request, principal)


async def submit(request: Request) -> Response:
    principal = require(request, Action.JOB_SUBMIT, Resource.federation())
    form = await request.form()
    check_csrf(request, form)
    spec = str(form.get("spec", ""))
    if len(spec.encode()) > MAX_SPEC_BYTES:
        return _list_page(request, principal, spec="", error=f"the spec exceeds {MAX_SPEC_BYTES} bytes", status=400)
    peer = Peer(name=principal.user_id, role=Role.RESEARCHER, source=_source(request))
    try:  # parse, check, store, audit (job.submitted) and launch: the coordinator's own path
        view = await run_in_threadpool(ctx(request).coordinator.submit_job, peer, spec, "dashboard form")
    except MedfedError as exc:
        return _list_page(request, principal, spec=spec, error=str(exc), status=400)
    return RedirectResponse(f"/jobs/{view['job_id']}", status_code=303)


def detail(request: Request) -> Response:
    resource, row = _job_resource(request, request.path_params["job_id"])
    principal = require(request, Action.JOB_READ, resource)
    view = job_view(ctx(request).coordinator.store, row, detail=True)
    metrics, comparison = job_data.comparison_rows(view)
    context = {
        "job": view,
        "progress": job_data.progress(view),
        "metrics": metrics,
        "comparison": comparison,
        "can_download": allowed(principal, Action.RESULT_READ, resource),
        "can_cancel": allowed(principal, Action.JOB_CANCEL, resource) and not row.state.finished,
        "has_report": job_data.report_path(ctx(request).state_dir, row.job_id).is_file(),
    }
    return render(request, "job.html", context)


async def cancel(request: Request) -> Response:
    """Stop a job (``job.cancel``: its owner, a federation admin, or a site admin under break glass)."""
    resource, row = _job_resource(request, request.path_params["job_id"])
    principal = require(request, Action.JOB_CANCEL, resource)
    form = await request.form()
    check_csrf(request, form)
    if not row.state.finished:  # the coordinator waits (up to 10 s) for the job's runner to stop
        peer = job_data.trusted_peer(principal.user_id, _source(request))
        await run_in_threadpool(ctx(request).coordinator.cancel_job, peer, row.job_id)
    return RedirectResponse(f"/jobs/{row.job_id}", status_code=303)


def progress_json(request: Request) -> Response:
    resource, row = _job_resource(request, request.path_params["job_id"], touch=False)
    require(request, Action.JOB_READ, resource, touch=False)  # the page polls: not a sign of a person
    view = job_view(ctx(request).coordinator.store, row, detail=True)
    return JSONResponse(job_data.progress(view))


def _attachment(body: bytes, filename: str, media_type: str) -> Response:
    headers = {"content-disposition": f'attachment; filename="{filename}"'}
    return Response(body, media_type=media_type, headers=headers)


def model(request: Request) -> Response:
    resource, row = _job_resource(request, request.path_params["job_id"])
    principal = require(request, Action.RESULT_READ, resource)
    peer = job_data.trusted_peer(principal.user_id, _source(request))
    npz = job_data.model_npz(ctx(request).coordinator, peer, row.job_id)
    return _attachment(npz, f"model-{row.job_id}.npz", "application/octet-stream")


def signature(request: Request) -> Response:
    """The signature alone: no model is loaded, so no model export is audited for it."""
    resource, row = _job_resource(request, request.path_params["job_id"])
    principal = require(request, Action.RESULT_READ, resource)
    signed = ctx(request).coordinator.model_signature(job_data.trusted_peer(principal.user_id), row.job_id)
    if not signed:
        raise HTTPException(404, f"job {row.job_id}'s model carries no signature")
    return _attachment(signed, f"model-{row.job_id}.sig.json", "application/json")


#: The report is a self-contained file with its own <style> and SVG plots and no script.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; base-uri 'none'"


def report(request: Request) -> Response:
    resource, row = _job_resource(request, request.path_params["job_id"])
    require(request, Action.JOB_READ, resource)
    path = job_data.report_path(ctx(request).state_dir, row.job_id)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
    else:  # not finished yet, or a coordinator that writes no reports: render the current state
        from medfed.report.html import render_job_report

        text = render_job_report(job_view(ctx(request).coordinator.store, row, detail=True))
    return Response(text, media_type="text/html", headers={"content-security-policy": REPORT_CSP})


def routes() -> list[Route]:
    return [
        Route("/jobs", jobs, methods=["GET"]),
        Route("/jobs", submit, methods=["POST"]),
        Route("/jobs/{job_id}", detail, methods=["GET"]),
        Route("/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/jobs/{job_id}/progress.json", progress_json, methods=["GET"]),
        Route("/jobs/{job_id}/model.npz", model, methods=["GET"]),
        Route("/jobs/{job_id}/signature.json", signature, methods=["GET"]),
        Route("/jobs/{job_id}/report", report, methods=["GET"]),
    ]
