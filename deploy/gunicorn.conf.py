"""gunicorn settings for casehub: `gunicorn -c deploy/gunicorn.conf.py wsgi:app`.

Every knob comes from the environment so one file serves the laptop demo and production:
CASEHUB_BIND, CASEHUB_WORKERS (or WEB_CONCURRENCY), CASEHUB_THREADS, CASEHUB_TIMEOUT,
CASEHUB_FORWARDED_ALLOW_IPS, CASEHUB_ACCESS_LOG, CASEHUB_LOG_LEVEL and CASEHUB_LOG_FORMAT.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from typing import Any

METRICS_DIR_PREFIX = "casehub-metrics-"


def _int(name: str, default: int, *, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be an integer, not {raw!r}") from exc
    if value < minimum:
        raise SystemExit(f"{name} must be at least {minimum}")
    return value


wsgi_app = "wsgi:app"
# Loopback by default: exposing the service is a deliberate choice (put TLS in front of it).
bind = os.environ.get("CASEHUB_BIND", "127.0.0.1:5000").split(",")

workers = _int("CASEHUB_WORKERS", _int("WEB_CONCURRENCY", 2))
# More than one thread selects the gthread worker; requests mostly wait on the database.
threads = _int("CASEHUB_THREADS", 4)
timeout = _int("CASEHUB_TIMEOUT", 30)
graceful_timeout = 20
keepalive = 5

# gunicorn 27 opens a control socket in $HOME by default: nothing here uses it, and a
# writable runtime socket is one more thing to secure in a container. Turn it off.
control_socket_disable = True

# Only these proxies may set X-Forwarded-Proto/For; the default trusts nothing but loopback.
forwarded_allow_ips = os.environ.get("CASEHUB_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# gunicorn's defaults, stated on purpose: a request line (path and query) of at most 4 KiB and
# headers of at most 8 KiB each (an access token is about 1 KiB). The app caps bodies at 1 MiB.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190

# The access log never carries query strings (subject searches hold children's names and
# dates of birth), the referrer (a partner's URL may hold them too) or the Basic-auth user.
# CASEHUB_LOG_FORMAT=json (the default) writes each line as JSON with the app's keys (see
# casehub/logs.py and the runbook's "Logs"): the route template, never the concrete path.
# CASEHUB_LOG_FORMAT=text (the demo) writes this format: client address, time, method, path,
# protocol, status, size, duration in ms, the worker's pid, and the X-Request-Id that ties it to
# the audit trail. Paths hold ids, never names. The logger refuses any other atom.
logger_class = "casehub.logs.GunicornLogger"
accesslog = os.environ.get("CASEHUB_ACCESS_LOG", "-") or None
access_log_format = (
    '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms worker=%(p)s rid=%({x-request-id}o)s'
)
errorlog = "-"
loglevel = os.environ.get("CASEHUB_LOG_LEVEL", "info").lower()


def pre_request(worker: Any, req: Any) -> None:
    """gunicorn's default writes each request's concrete path at debug level (a path that routes
    nowhere holds whatever the caller typed): the app's request line, with the route template,
    says what it would have said."""


proc_name = "casehub"


# -- metrics across workers ----------------------------------------------------------------------
# Each worker process counts its own requests. prometheus_client's multiprocess mode has every
# worker write its counters to files in PROMETHEUS_MULTIPROC_DIR and /metrics add them up, so a
# scrape that lands on one worker still reports the whole server. The variable must be set before
# a worker imports prometheus_client, which these master-side hooks guarantee.
def on_starting(server: Any) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX)
        return
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # Counts from a previous run of the server would otherwise be added to this one's.
    for stale in glob.glob(os.path.join(directory, "*.db")):
        os.remove(stale)


def child_exit(server: Any, worker: Any) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path=directory)


def on_exit(server: Any) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    # Only the folder on_starting made; one the operator chose is theirs to keep.
    parent, name = os.path.split(directory)
    if parent == tempfile.gettempdir() and name.startswith(METRICS_DIR_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)
