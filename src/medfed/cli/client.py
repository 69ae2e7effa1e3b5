"""The one way a ``medfed`` command opens a connection to the coordinator as a person.

Every command that talks to the coordinator (``job``, ``query``, ``synth submit|result``,
``catalog search --federation``) takes ``--config client.toml`` and ``--token-file`` from
:func:`add_client_args` and opens its :class:`~medfed.transport.grpc_client.ResearcherClient`
with :func:`coordinator_client`. Who the person is, at a coordinator with a user store:

1. an API token in ``--token-file`` (given explicitly, it wins),
2. else the session ``medfed login --config client.toml`` saved in ``client.session``,
3. else an API token in ``$MEDFED_TOKEN``,
4. else nothing: the certificate alone (enough at a coordinator without a user store).

Files and environment variables are read by :mod:`medfed.cli.config` (the only reader).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from medfed.core.errors import AuthenticationError, PermissionDenied

if TYPE_CHECKING:
    from medfed.transport.grpc_client import ResearcherClient

__all__ = ["CLIENT_CONFIG_ENV", "add_client_args", "client_config_path", "coordinator_client", "open_client"]

#: The variable naming ``client.toml`` when ``--config`` is not given.
CLIENT_CONFIG_ENV = "MEDFED_CLIENT_CONFIG"
#: The coordinator's reason when a call came with neither a session nor a token (coordinator/people.py).
_NO_LOGIN = "requires a login"


def add_client_args(p: argparse.ArgumentParser, *, config: bool = True) -> None:
    """Add ``--config`` (unless the command has its own) and ``--token-file`` to a command's parser."""
    if config:
        p.add_argument("--config", type=Path, help=f"client.toml (default: ${CLIENT_CONFIG_ENV} or ./client.toml)")
    p.add_argument("--token-file", type=Path, help="API token to send instead of a login session ($MEDFED_TOKEN)")


def client_config_path(args: argparse.Namespace) -> Path:
    """``--config``, else ``$MEDFED_CLIENT_CONFIG``, else ``./client.toml``."""
    given: Path | None = getattr(args, "config", None)
    return given or Path(os.environ.get(CLIENT_CONFIG_ENV, "client.toml"))


def open_client(args: argparse.Namespace) -> ResearcherClient:
    """A client for the person of ``client.toml``, carrying their token or login session (see the module)."""
    from medfed.cli.config import load_client_config, read_api_token, read_session
    from medfed.transport.grpc_client import ResearcherClient

    path = client_config_path(args)
    cfg = load_client_config(path)
    token_file: Path | None = getattr(args, "token_file", None)
    session = "" if token_file is not None else read_session(path)
    token = "" if session else read_api_token(token_file)
    return ResearcherClient(cfg.coordinator, cfg.tls, session=session, token=token)


@contextmanager
def coordinator_client(args: argparse.Namespace) -> Iterator[ResearcherClient]:
    """:func:`open_client`, closed on exit. When the coordinator asks for a login and this command
    sent none, or refuses what it sent, the error says what was sent and how to log in again."""
    client = open_client(args)
    try:
        yield client
    except AuthenticationError as exc:
        if client.session or client.token or _NO_LOGIN not in str(exc):
            raise
        raise AuthenticationError(_login_hint(args, client.target)) from None
    except PermissionDenied as exc:
        from medfed.security.users import AuthenticationFailed  # its one opaque message for every refusal

        if str(exc) != str(AuthenticationFailed()):
            raise
        raise PermissionDenied(f"{exc}: {_sent(args, client)}") from None
    finally:
        client.close()


def _login_hint(args: argparse.Namespace, target: str) -> str:
    from medfed.cli.config import session_path

    path = client_config_path(args)
    return (
        f"the coordinator at {target} requires a login and this command has none "
        f"(no session in {session_path(path)}, no --token-file, no $MEDFED_TOKEN): "
        f"run `medfed login --config {path}`, or give an API token with --token-file or $MEDFED_TOKEN"
    )


def _sent(args: argparse.Namespace, client: ResearcherClient) -> str:
    """What the refused call carried, and what to do about it (the coordinator's reason stays in its audit log)."""
    from medfed.cli.config import TOKEN_ENV, session_path

    path = client_config_path(args)
    if client.session:
        return f"the login session in {session_path(path)} was refused; log in again: medfed login --config {path}"
    source = f"--token-file {args.token_file}" if getattr(args, "token_file", None) else f"${TOKEN_ENV}"
    return f"the API token from {source} was refused (unknown, expired or revoked); issue a new one"
