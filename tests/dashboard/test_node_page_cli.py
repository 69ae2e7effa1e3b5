"""``medfed node start --page``: real node processes serve the local page over HTTPS on loopback
with the site's kit certificate, and refuse a public address or a missing user store, saying why."""

from __future__ import annotations

import base64
import re
import ssl
import urllib.request
from pathlib import Path

import pytest

from integration.support import Process, make_federation, wait_until
from medfed.crypto.aead import Keyring, generate_key
from medfed.learn.base import TabularData
from medfed.security.authz import UserRole
from medfed.security.users import AuthPolicy, UserStore

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

CHEAP = AuthPolicy(argon2_time_cost=1, argon2_memory_kib=8 * 1024, argon2_parallelism=1)


@pytest.fixture
def site_toml(tmp_path: Path, heart: dict[str, TabularData], monkeypatch: pytest.MonkeyPatch) -> Path:
    """alpha's site.toml with a state directory; the data key in $MEDFED_DATA_KEY (children inherit it)."""
    fed = make_federation(tmp_path / "fed", heart, sites=("alpha",))
    toml = fed.site_toml("alpha")
    toml.write_text(toml.read_text().replace("[node]\n", '[node]\nstate_dir = "state"\n'))
    key = generate_key("k1")
    monkeypatch.setenv("MEDFED_DATA_KEY", f"k1:{base64.b64encode(key.secret).decode()}")
    (toml.parent / "state").mkdir()
    return toml


def _users(state: Path) -> None:
    """The site's own user store, as ``medfed users add --users-db <state>/users.db`` leaves it."""
    import os

    from medfed.security.keys import keyring_from_env

    keyring = keyring_from_env(os.environ) or Keyring.single(generate_key("unused"))
    store = UserStore(state / "users.db", audit=lambda e, f: None, keyring=keyring, policy=CHEAP)
    store.add_user("keeper", UserRole.SITE_ADMIN, "correct horse battery staple", site="alpha")
    store.close()


def _node(toml: Path, tmp_path: Path, *page: str) -> Process:
    return Process(["node", "start", "--config", str(toml), *page], tmp_path / "logs" / f"node{len(page)}.log")


def test_a_public_address_needs_page_public(site_toml: Path, tmp_path: Path) -> None:
    _users(site_toml.parent / "state")
    p = _node(site_toml, tmp_path, "--page", "0.0.0.0:0")
    assert p.wait(60) != 0
    assert "listens on 127.0.0.1 only unless --page-public" in p.text()


def test_without_the_sites_own_user_store_the_page_does_not_start(site_toml: Path, tmp_path: Path) -> None:
    p = _node(site_toml, tmp_path, "--page", "127.0.0.1:0")
    assert p.wait(60) != 0
    assert "users.db" in p.text() and "medfed users add" in p.text()


def test_the_node_serves_its_page_over_https_on_loopback(site_toml: Path, tmp_path: Path) -> None:
    _users(site_toml.parent / "state")
    p = _node(site_toml, tmp_path, "--page", "127.0.0.1:0")
    try:
        found = wait_until(
            lambda: re.search(r"node page for site alpha at (https://127\.0\.0\.1:\d+)", p.text()) or p.popen.poll(),
            timeout_s=90, what="the node page to listen",
        )  # fmt: skip
        assert isinstance(found, re.Match), p.text()
        url = found.group(1)
        # the kit's certificate is a client certificate (EKU clientAuth) naming the site: a browser
        # warns about it, so this client does not verify it; it checks it is the kit's certificate instead
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with urllib.request.urlopen(url + "/login", context=context, timeout=30) as response:
            body = response.read().decode()
            headers = response.headers
        host, port = url.removeprefix("https://").split(":")
        served = ssl.get_server_certificate((host, int(port)))
        kit = (site_toml.parent / "cert.pem").read_text()
        assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(kit)
        assert "Log in" in body and "medfed node · alpha" in body
        assert "default-src 'none'" in headers["content-security-policy"]
        with pytest.raises(OSError):  # no plaintext listener
            urllib.request.urlopen(url.replace("https", "http") + "/login", timeout=30)
    finally:
        assert p.stop() == 0, p.text()
