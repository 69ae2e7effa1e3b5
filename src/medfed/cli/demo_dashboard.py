"""``medfed demo --dashboard``: the demo federation's people, so its coordinator serves the dashboard.

A coordinator with a user store requires a password + TOTP session on every people call, and its
dashboard logs people in the same way. So the demo, before it starts the coordinator, creates a
user store in its work directory with two people, ``researcher`` (who owns the demo job) and
``auditor``, sharing one random password, each with TOTP enrolled. Their TOTP secrets are sealed
in the store under a fresh data key handed to the coordinator in ``$MEDFED_DATA_KEY``, and written
(owner-only) beside it so that ``medfed demo --workdir DIR --totp-code USER`` prints a code.

The demo is a throw-away federation on 127.0.0.1: its password and secrets are printed and lie in
plain files in its work directory. Never reuse them, and never run the demo with real data.

A TOTP code works once (RFC 6238 §5.2). The demo's own researcher client logs in over gRPC with the
code of an earlier step than the current one where it can, so that the person's current code
stays free; where the clock has not moved on since enrolment it spends the current step, and the
person waits for the next code (at most 30 s).
"""

from __future__ import annotations

import base64
import ipaddress
import re
import secrets
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from medfed.cli.views import console
from medfed.core.errors import ConfigError, JobError, TransportError
from medfed.crypto.aead import Keyring, generate_key
from medfed.security.authz import UserRole
from medfed.security.fsio import PRIVATE, atomic_write
from medfed.security.keys import KEY_ENV
from medfed.security.users import TOTP_STEP_S, Credentials, UserStore, totp_code

__all__ = [
    "DEMO_PEOPLE",
    "DemoPeople",
    "create_demo_people",
    "dashboard_address",
    "dashboard_url",
    "login_demo_client",
    "print_access",
    "print_totp_code",
    "wait_for_interrupt",
]

#: The demo's people: user id -> role. ``researcher`` also holds the demo's client certificate.
DEMO_PEOPLE: dict[str, UserRole] = {"researcher": UserRole.RESEARCHER, "auditor": UserRole.AUDITOR}
_DASHBOARD_LINE = re.compile(r"dashboard at (https://\S+?)/? ")


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoPeople:
    """What the demo made: the user store, the shared password, each person's TOTP secret and
    ``otpauth://`` URI, the step their enrolment spent, and the data key (``$MEDFED_DATA_KEY``)."""

    users_db: Path
    password: str
    secrets: dict[str, bytes]
    uris: dict[str, str]
    enrolled_step: int
    data_key: str

    def coordinator_env(self) -> dict[str, str]:
        """The coordinator's environment addition: the key that opens the sealed TOTP secrets."""
        return {KEY_ENV: self.data_key}


def people_dir(root: Path) -> Path:
    return root / "people"


def dashboard_address(text: str) -> str:
    """Check ``--dashboard HOST:PORT``: the demo serves its dashboard on a loopback address only."""
    host, sep, port = text.rpartition(":")
    problems = []
    if not sep or not port.isdigit() or int(port) > 65535:
        problems.append("expected HOST:PORT, e.g. 127.0.0.1:8443 (port 0: any free port)")
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        problems.append(f"the demo's dashboard listens on a loopback address only, got host {host!r}")
    if problems:
        raise ConfigError(f"--dashboard {text!r}: " + "; ".join(problems))
    return text


def create_demo_people(root: Path) -> DemoPeople:
    """Create ``<root>/state/users.db`` with :data:`DEMO_PEOPLE`, one random password, TOTP enrolled.

    Enrolment confirms with the previous step's code (RFC 6238 allows one step of drift), so the
    demo client's login can still spend a step before the person's current one."""
    key = generate_key("demo")
    users_db = root / "state" / "users.db"
    users_db.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(12)  # 16 characters; the policy asks for 12
    store = UserStore(users_db, audit=lambda event, fields: None, keyring=Keyring.single(key))
    made: dict[str, bytes] = {}
    uris: dict[str, str] = {}
    steps: list[int] = []
    try:
        for user_id, role in DEMO_PEOPLE.items():
            store.add_user(user_id, role, password)
            uris[user_id] = store.begin_totp(Credentials(user_id=user_id, password=password), issuer="medfed-demo")
            made[user_id] = _secret_of(uris[user_id])
            steps.append(_confirm_previous_step(store, user_id, made[user_id]))
    finally:
        store.close()
    people_dir(root).mkdir(parents=True, exist_ok=True)
    for user_id, secret in made.items():
        atomic_write(people_dir(root) / f"{user_id}.totp", base64.b32encode(secret) + b"\n", mode=PRIVATE)
    data_key = f"{key.key_id}:{base64.b64encode(key.secret).decode()}"
    return DemoPeople(
        users_db=users_db,
        password=password,
        secrets=made,
        uris=uris,
        enrolled_step=max(steps),
        data_key=data_key,
    )


def _confirm_previous_step(store: UserStore, user_id: str, secret: bytes) -> int:
    """Confirm enrolment with the previous step's code; the step spent. Not in a step's last
    second, so that the store's own clock (read a moment later) sees the same step."""
    now = time.time()
    while now % TOTP_STEP_S > TOTP_STEP_S - 1:
        time.sleep(1.0)
        now = time.time()
    store.confirm_totp(user_id, totp_code(secret, at=now - TOTP_STEP_S))
    return int(now // TOTP_STEP_S) - 1


def _secret_of(uri: str) -> bytes:
    b32 = parse_qs(urlparse(uri).query)["secret"][0]
    return base64.b32decode(b32 + "=" * (-len(b32) % 8))


def login_demo_client(client: Any, people: DemoPeople, *, deadline: float) -> None:
    """Log the demo's researcher client in over gRPC (``Login``: password + TOTP), retrying while
    the coordinator is not up yet (until ``deadline``, a :func:`time.monotonic` value).

    The code is the earliest step not yet spent and not older than one step (RFC 6238 §5.2 drift),
    so the person's current code stays free where the clock allows."""
    while True:
        step = max(people.enrolled_step + 1, int(time.time() // TOTP_STEP_S) - 1)
        code = totp_code(people.secrets["researcher"], at=step * TOTP_STEP_S)
        try:
            client.login("researcher", people.password, code)
            return
        except TransportError:
            if time.monotonic() > deadline:
                raise JobError("the demo's coordinator did not answer its researcher's login in time") from None
            time.sleep(0.3)


def dashboard_url(coordinator_out: Path, *, deadline: float, alive: Any) -> str:
    """The dashboard's URL, from the line the coordinator prints once it serves it (port 0 works)."""
    while True:
        text = coordinator_out.read_text(errors="replace") if coordinator_out.is_file() else ""
        found = _DASHBOARD_LINE.search(text)
        if found:
            return found.group(1)
        if not alive():
            raise JobError(f"the demo's coordinator exited before its dashboard started; see {coordinator_out.parent}")
        if time.monotonic() > deadline:
            raise JobError(f"the demo's dashboard did not start in time; see {coordinator_out}")
        time.sleep(0.2)


def print_access(url: str, people: DemoPeople, root: Path) -> None:
    """How to log in: URL, user names, password, the TOTP URI and a command that prints the code."""
    now = time.time()
    console.print(
        f"[bold]dashboard[/]: {url}/ (HTTPS with the demo federation's own certificate: the browser warns)",
        soft_wrap=True,
    )
    console.print(
        f"  log in as [bold]researcher[/] (owns the demo job) or [bold]auditor[/], password {people.password}",
        soft_wrap=True,
    )
    for user_id, uri in people.uris.items():
        # the demo client's login spent at most the current step of researcher's: the next step's
        # code is still unspent, and accepted now (one step of drift, RFC 6238 §5.2)
        at = now + TOTP_STEP_S if user_id == "researcher" else now
        code = totp_code(people.secrets[user_id], at=at)
        console.print(f"  {user_id} TOTP: {uri}  (a code that works now: {code})", soft_wrap=True)
    console.print(f"  a fresh code: medfed demo --workdir {root} --totp-code researcher", soft_wrap=True)
    console.print(
        "  a code works once: if the current one is refused, the demo's own login spent it: use the next one.\n"
        "  [yellow]a throw-away federation: this password and these secrets are printed and lie in "
        f"{people_dir(root)} in clear; never reuse them, never give the demo real data.[/]",
        soft_wrap=True,
    )


def print_totp_code(root: Path, user_id: str) -> int:
    """``medfed demo --workdir DIR --totp-code USER``: the demo person's current and next TOTP code."""
    path = people_dir(root) / f"{user_id}.totp"
    if user_id not in DEMO_PEOPLE:
        raise ConfigError(f"--totp-code {user_id!r}: the demo's people are {sorted(DEMO_PEOPLE)}")
    try:
        secret = base64.b32decode(path.read_text().strip())
    except OSError as exc:
        raise ConfigError(f"{path}: no demo TOTP secret here ({exc.strerror or exc}); run medfed demo --dashboard "
                          f"--workdir {root} first") from None  # fmt: skip
    except ValueError:
        raise ConfigError(f"{path}: not a base32 TOTP secret") from None
    now = time.time()
    left = TOTP_STEP_S - int(now % TOTP_STEP_S)
    print(f"{totp_code(secret, at=now)}  (next: {totp_code(secret, at=now + TOTP_STEP_S)} in {left}s)")
    return 0


def wait_for_interrupt() -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM; the caller then shuts the federation down cleanly."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(3600):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
