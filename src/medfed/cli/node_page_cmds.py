"""``medfed node start --page HOST:PORT``: the node's local page, served from the node process.

Wiring (in :mod:`medfed.cli.main` and :mod:`medfed.cli.commands`): ``add_arguments`` on the
``node start`` parser; ``start_page(args, cfg)`` before the node runs, ``stop()`` after.

The page listens on 127.0.0.1 only unless ``--page-public`` is given, over HTTPS with the site's kit
certificate and key (``[tls]`` of site.toml). People log in against the site's own user store
(``<state_dir>/users.db``), whose TOTP secrets are sealed under ``--page-key-file`` or
``$MEDFED_DATA_KEY`` (the same keyring ``medfed users add --users-db ...`` used).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medfed.cli.config import NodeConfig, _tls_paths, read_toml  # _tls_paths: the [tls] rule of load_node_config
from medfed.core.errors import ConfigError

__all__ = ["add_arguments", "start_page"]


def add_arguments(start: Any) -> None:  # argparse's parser; typed loosely like the other sub-parser hooks
    start.add_argument("--page", metavar="HOST:PORT", help="serve the node's local page (e.g. 127.0.0.1:8765)")
    start.add_argument("--page-public", action="store_true", help="allow --page on a non-loopback address")
    start.add_argument("--page-cert", type=Path, help="a server certificate for the page (default: the kit's cert)")
    start.add_argument("--page-key", type=Path, help="its private key (with --page-cert)")
    start.add_argument(
        "--page-key-file", type=Path, help="keyring of the site's user store (default: $MEDFED_DATA_KEY)"
    )


def start_page(args: argparse.Namespace, cfg: NodeConfig) -> Callable[[], None] | None:
    """Start the page if ``--page`` was given; return its stop function (``None`` without a page).

    Raises
    ------
    ConfigError
        A non-loopback address without ``--page-public``, no state_dir, no user store, no keyring.
    """
    if not getattr(args, "page", None):
        return None
    from medfed.dashboard.node_page import check_page_address, create_node_app, open_node_page
    from medfed.dashboard.server import parse_https_address, serve_dashboard
    from medfed.security.keys import load_keyring

    try:
        host, port = parse_https_address(args.page)
    except ConfigError:
        raise ConfigError(f"--page {args.page!r}: expected host:port, e.g. 127.0.0.1:8765") from None
    check_page_address(host, public=args.page_public)
    if (args.page_cert is None) != (args.page_key is None):
        raise ConfigError("--page-cert and --page-key go together")
    if args.page_cert is not None:  # a server certificate the hospital issued for the page's host name
        cert, key = args.page_cert, args.page_key
    else:  # the kit's identity: a client certificate, so browsers warn (see docs/dashboard.md)
        _, cert, key = _tls_paths(read_toml(args.config), args.config)
    state = cfg.settings.state_dir
    keyring = load_keyring(args.page_key_file, os.environ, data_dirs=(state,) if state is not None else ())
    context = open_node_page(cfg.settings, keyring=keyring)
    try:
        server = serve_dashboard(create_node_app(context), host=host, port=port, cert_path=cert, key_path=key)
    except BaseException:
        context.close()
        raise
    print(f"node page for site {cfg.settings.site} at {server.url}", flush=True)

    def stop() -> None:
        server.stop()
        context.close()

    return stop
