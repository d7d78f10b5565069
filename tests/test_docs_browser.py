"""/docs in a real browser: headless Chromium renders every operation of the OpenAPI 3.1 document
from files this service serves itself, and the page asks nothing of any other host."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import WSGIRequestHandler, make_server

CHROMIUM = Path("/usr/bin/chromium")
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
ERR_NAME_NOT_RESOLVED = -105
# What Swagger UI shows instead of the operations when it cannot read or fetch a document.
RENDER_FAILURES = (
    "Unable to render this definition",
    "Failed to load API definition",
    "errors-wrapper",
)


# -- the page and its files, without a browser ---------------------------------------------------
def _directives(policy: str) -> dict[str, list[str]]:
    parts = (directive.split() for directive in policy.split(";") if directive.strip())
    return {name: values for name, *values in parts}


def test_docs_page_sends_a_strict_content_security_policy(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    policy = _directives(response.headers["Content-Security-Policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    # So the page itself must carry no inline script or style for the policy to refuse.
    page = response.get_data(as_text=True)
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.DOTALL)
    assert scripts, "the page loads no script at all"
    for attributes, body in scripts:
        assert 'src="/docs/assets/' in attributes and not body.strip(), attributes
    assert "<style" not in page and "style=" not in page
    assert re.search(r"\son[a-z]+=", page) is None, "inline event handler"


@pytest.mark.parametrize(
    ("name", "mimetype", "marker"),
    [
        ("swagger-ui-bundle.js", "text/javascript", b"SwaggerUIBundle"),
        ("casehub-docs.js", "text/javascript", b"validatorUrl: null"),
        ("swagger-ui.css", "text/css", b".swagger-ui"),
        ("index.css", "text/css", b"box-sizing"),
        ("favicon-32x32.png", "image/png", b"\x89PNG"),
        ("favicon-16x16.png", "image/png", b"\x89PNG"),
    ],
)
def test_docs_assets_are_served_with_their_types(
    client: FlaskClient, name: str, mimetype: str, marker: bytes
) -> None:
    with client.get(f"/docs/assets/{name}") as response:
        assert response.status_code == 200
        assert response.mimetype == mimetype
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert marker in response.data


@pytest.mark.parametrize(
    "name",
    [
        "no-such-file.js",
        # In the package's dist folder, but not something the page loads: the stock index.html
        # and oauth2-redirect.html carry inline scripts and the Petstore URL.
        "index.html",
        "oauth2-redirect.html",
        "oauth2-redirect.js",
        "swagger-ui.js",
        "VERSION",
        "../docs.py",
        "..%2Fdocs.py",
        "docs_assets/casehub-docs.js",
    ],
)
def test_unknown_docs_assets_are_404(client: FlaskClient, name: str) -> None:
    with client.get(f"/docs/assets/{name}") as response:
        assert response.status_code == 404, name


# -- the page in Chromium ------------------------------------------------------------------------
class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    """The test app over real HTTP on a free loopback port (/docs and /openapi.json need no
    database, so no transaction is set up)."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="docs-live-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {CHROMIUM} is missing: .ci/install-browser installs it")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium, or .ci/install-browser)")


@dataclass
class Visit:
    dom: str
    stderr: str
    net_log: dict[str, Any]

    @property
    def console_messages(self) -> list[str]:
        """What the page wrote to its console, CSP violations included ("...:CONSOLE:1] ...")."""
        return [line for line in self.stderr.splitlines() if ":CONSOLE" in line]


def _visit(url: str, tmp_path: Path) -> Visit:
    net_log = tmp_path / "netlog.json"
    command = [
        str(_chromium()),
        "--headless=new",
        "--no-sandbox",  # tests may run as root in a container
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        # Any host but the loopback address fails to resolve, so nothing can leave the machine
        # even if the page tried; the NetLog then shows whether it tried.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--log-net-log={net_log}",
        "--enable-logging=stderr",
        "--log-level=0",  # console messages (CSP violations among them) are logged as INFO
        "--virtual-time-budget=15000",
        "--dump-dom",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return Visit(result.stdout, result.stderr, _read_net_log(net_log))


def _read_net_log(path: Path) -> dict[str, Any]:
    text = path.read_text()
    try:
        return json.loads(text)  # type: ignore[no-any-return]
    except json.JSONDecodeError:
        # A browser that exits without closing its log leaves the events list open.
        return json.loads(text.rstrip().rstrip(",") + "]}")  # type: ignore[no-any-return]


class _Operations(HTMLParser):
    """(METHOD, path) of every operation Swagger UI rendered: an `.opblock.opblock-<method>`
    holding an `.opblock-summary-path[data-path]`."""

    def __init__(self) -> None:
        super().__init__()
        self.method: str | None = None
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if "opblock" in classes:
            methods = [c.removeprefix("opblock-") for c in classes if c.startswith("opblock-")]
            self.method = next((m.upper() for m in methods if m in HTTP_METHODS), None)
        elif "opblock-summary-path" in classes and self.method is not None:
            self.found.append((self.method, attributes.get("data-path") or ""))


@dataclass
class Request:
    url: str
    initiator: str
    isolation_key: str
    net_error: int | None


def _url_requests(net_log: dict[str, Any]) -> list[Request]:
    """Every URL request Chromium's network stack started, with how it ended."""
    constants = net_log["constants"]
    start_job = constants["logEventTypes"]["URL_REQUEST_START_JOB"]
    begin = constants["logEventPhase"]["PHASE_BEGIN"]
    started: dict[int, dict[str, Any]] = {}
    errors: dict[int, int] = {}
    for event in net_log["events"]:
        source = event["source"]["id"]
        params = event.get("params") or {}
        if event["type"] == start_job and event["phase"] == begin and "url" in params:
            started.setdefault(source, params)
        if "net_error" in params:
            errors.setdefault(source, params["net_error"])
    return [
        Request(
            url=params["url"],
            initiator=params.get("initiator", ""),
            isolation_key=params.get("network_isolation_key", ""),
            net_error=errors.get(source),
        )
        for source, params in started.items()
    ]


def test_docs_render_every_operation_offline_in_chromium(live_server: str, tmp_path: Path) -> None:
    visit = _visit(f"{live_server}/docs", tmp_path)

    # (a) Swagger UI read the document: no failure banner, and it knows the version it read.
    dom = visit.dom
    for failure in RENDER_FAILURES:
        assert failure not in dom, f"{failure!r} on the page"
    assert "OAS 3.1" in dom, f"Swagger UI rendered no document: {visit.console_messages}"

    # (b) Every operation of the served document is rendered, and nothing else.
    with urllib.request.urlopen(f"{live_server}/openapi.json") as served:
        document = json.load(served)
    # Paths, and the OpenAPI 3.1 webhooks (the requests casehub sends), which Swagger UI lists
    # under their names.
    expected = sorted(
        (method.upper(), path)
        for section in ("paths", "webhooks")
        for path, item in document.get(section, {}).items()
        for method in item
        if method in HTTP_METHODS
    )
    parser = _Operations()
    parser.feed(dom)
    assert sorted(parser.found) == expected

    # No console message about the Content-Security-Policy: Swagger UI needs nothing it forbids.
    refused = [m for m in visit.console_messages if "Content Security Policy" in m]
    assert not refused, refused
    uncaught = [m for m in visit.console_messages if "Uncaught" in m]
    assert not uncaught, uncaught

    # (c) The page fetched only from this server. The browser's own background services
    # (updates, sign-in, clock) have no page origin and an isolation key of their own; they
    # are allowed to try, and must have died at name resolution, i.e. never left the machine.
    page_requests: list[Request] = []
    browser_requests: list[Request] = []
    for request in _url_requests(visit.net_log):
        by_page = request.initiator != "not an origin" or "127.0.0.1" in request.isolation_key
        (page_requests if by_page else browser_requests).append(request)
    page_urls = {r.url for r in page_requests}
    assert {
        f"{live_server}/docs",
        f"{live_server}/openapi.json",
        f"{live_server}/docs/assets/swagger-ui-bundle.js",
        f"{live_server}/docs/assets/casehub-docs.js",
        f"{live_server}/docs/assets/swagger-ui.css",
    } <= page_urls, sorted(page_urls)
    elsewhere = sorted(url for url in page_urls if not url.startswith(f"{live_server}/"))
    assert not elsewhere, f"the docs page asked other hosts: {elsewhere}"
    escaped = sorted(r.url for r in browser_requests if r.net_error != ERR_NAME_NOT_RESOLVED)
    assert not escaped, f"browser requests that were not stopped at name resolution: {escaped}"
