"""Logs an operator can use, and that never hold a child's data.

`CASEHUB_LOG_FORMAT=json` (the default) writes one JSON object per line; `text` writes the lines
a person reads on a laptop (the demo). `CASEHUB_LOG_LEVEL` (default `info`) is the level of the
root logger here and of gunicorn's error log. Keys, formats and what is never logged are
documented in deploy/README.md ("Logs").

- Every record written inside a request carries its context: `request_id`, `client_id`,
  `agency`, `method` and `route` (the route template, `/v1/referrals/<uuid:referral_id>`, never
  the concrete path). The context comes from `flask.g` through `RequestContext`, a filter on
  the handler `configure` installs.
- `init_app` adds one `request completed` line per request (`status`, `duration_ms`).
- `GunicornLogger` (named by deploy/gunicorn.conf.py) writes gunicorn's error and access logs
  in the same format, with the same keys; an access line never holds the query string, the
  referrer or the Basic-auth user, and in JSON not even the concrete path.
- Every record is redacted as it is made (`install_redaction`, a log record factory), whoever
  logs it and whichever handler writes it: an exception keeps its type and traceback but never
  its message (a database error's message holds the values it refused: `DETAIL: Key
  (email)=(...)`, `Failing row contains (...)`, `invalid input syntax for type uuid: "..."`),
  only its SQLSTATE and the names of the constraint, table and column; SQLAlchemy's debug
  lines of result rows are withheld; query strings are cut from the lines urllib3, werkzeug and
  gunicorn write; authlib's debug lines never show an issued token or a client id that failed
  to authenticate.
- A JSON line holds only the keys named here: an `extra` nobody listed is never written.

gunicorn's master imports this module (its logger class) before any worker exists: it imports
nothing of the application but casehub.config, and nothing that reads PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, has_request_context, request, request_finished
from gunicorn import glogging
from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter

from casehub.config import DEFAULTS, LOG_FORMATS, LOG_LEVELS

DEFAULT_FORMAT: str = DEFAULTS["LOG_FORMAT"]
DEFAULT_LEVEL: str = DEFAULTS["LOG_LEVEL"]

# The keys of a JSON line, in order. Every line has BASE_FIELDS; a line written inside a request
# also has CONTEXT_FIELDS; the request-completed line is exactly REQUEST_LINE_FIELDS and an
# access line exactly ACCESS_LINE_FIELDS; a line with an exception adds `exc_info`.
BASE_FIELDS = ("time", "level", "logger", "message", "worker")
CONTEXT_FIELDS = ("request_id", "client_id", "agency", "method", "route")
REQUEST_LINE_FIELDS = (*BASE_FIELDS, *CONTEXT_FIELDS, "status", "duration_ms")
ACCESS_LINE_FIELDS = (*REQUEST_LINE_FIELDS, "remote_addr", "bytes")
EXTRA_FIELDS = (*CONTEXT_FIELDS, "status", "duration_ms", "remote_addr", "bytes")
TRACE_FIELDS = ("exc_info", "stack_info")

REQUEST_LOGGER = "casehub.request"
# The app leaves the request's route and caller here for gunicorn's access line (the WSGI
# environ is the one dict both see).
ENVIRON_KEY = "casehub.log"
WITHHELD = "<withheld>"


# -- formats ---------------------------------------------------------------------------------
def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class JsonFormatter(_BaseJsonFormatter):
    """One JSON object per line with the documented keys only."""

    def __init__(self) -> None:
        super().__init__()

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = _iso(record.created)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.message
        log_data["worker"] = record.process  # the pid of the process that wrote the line
        for key in EXTRA_FIELDS:
            if key in record.__dict__:
                log_data[key] = record.__dict__[key]
        for key in TRACE_FIELDS:
            if message_dict.get(key):
                log_data[key] = message_dict[key]

    def formatException(self, ei: Any) -> str:  # type: ignore[override]
        return super().formatException(withhold_exc_info(ei))  # type: ignore[no-any-return]


class TextFormatter(logging.Formatter):
    """`time LEVEL [pid] logger: message key=value ...`, then any traceback."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = [
            f"{key}={'-' if record.__dict__[key] is None else record.__dict__[key]}"
            for key in EXTRA_FIELDS
            if key in record.__dict__
        ]
        return " ".join([line, *fields])

    def formatException(self, ei: Any) -> str:
        return super().formatException(withhold_exc_info(ei))


def formatter(fmt: str) -> logging.Formatter:
    fmt = fmt.lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"the log format is json or text, not {fmt!r}")
    return JsonFormatter() if fmt == "json" else TextFormatter()


# -- request context -------------------------------------------------------------------------
def request_context() -> dict[str, Any]:
    """The current request's context keys (None where unknown: no token, no matching route)."""
    actor = g.get("actor")
    rule = request.url_rule
    return {
        "request_id": g.get("request_id"),
        "client_id": getattr(actor, "client_id", None),
        "agency": getattr(actor, "agency", None),
        "method": request.method,
        "route": rule.rule if rule is not None else None,
    }


class RequestContext(logging.Filter):
    """Adds the request's context to a record written while a request is being served."""

    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context():
            for key, value in request_context().items():
                record.__dict__.setdefault(key, value)
        return True


class Chatter(logging.Filter):
    """Drops the two lines alembic writes each time it reads the schema's revision, which
    /readyz does on every probe. Its lines about migrations it runs are kept."""

    LINES = frozenset({"Context impl %s.", "Will assume %s DDL."})

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "alembic.runtime.migration" and record.msg in self.LINES)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a line is written (test runners replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def make_handler(fmt: str, stream: Any = None) -> logging.Handler:
    """A handler writing `fmt` lines (to `stream`, else standard error) with request context."""
    handler: logging.Handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(Chatter())
    handler.addFilter(RequestContext())
    return handler


def configure(level: str = DEFAULT_LEVEL, fmt: str = DEFAULT_FORMAT) -> None:
    """This process's logging: one handler on the root logger, on standard error. Calling it
    again (another app in the same process) replaces that handler instead of adding one."""
    level = level.lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"the log level is one of {', '.join(LOG_LEVELS)}, not {level!r}")
    install_redaction()
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_casehub", False)]:
        root.removeHandler(old)
    handler = make_handler(fmt)
    handler._casehub = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())


def init_app(app: Flask) -> None:
    configure(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    request_finished.connect(_request_finished, app)


def _request_finished(sender: Flask, response: Response, **_: Any) -> None:
    """One line per request, once the response is final (after web.py's commit)."""
    context = request_context()
    started = g.get("started")
    duration = round((time.perf_counter() - started) * 1000, 1) if started else None
    request.environ[ENVIRON_KEY] = {key: context[key] for key in ("route", "client_id", "agency")}
    logging.getLogger(REQUEST_LOGGER).info(
        "request completed",
        extra={**context, "status": response.status_code, "duration_ms": duration},
    )


# -- redaction -------------------------------------------------------------------------------
class Withheld(Exception):
    """Stands in for an exception in a log record: the same type name and traceback, none of
    the message, which may quote the data that caused it."""


_SURROGATES: dict[type[BaseException], type[Withheld]] = {}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$.]{0,127}$")
_SQLSTATE = re.compile(r"^[0-9A-Z]{5}$")
_SQLITE_NAME = re.compile(r"^SQLITE_[A-Z_]+$")


def _surrogate_type(kind: type[BaseException]) -> type[Withheld]:
    if issubclass(kind, Withheld):
        return kind
    found = _SURROGATES.get(kind)
    if found is None:
        found = type(
            kind.__name__,
            (Withheld,),
            {"__module__": kind.__module__, "__qualname__": kind.__qualname__},
        )
        _SURROGATES[kind] = found
    return found


def _qualname(kind: type) -> str:
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def describe(error: BaseException) -> str:
    """What may be said of an exception: its database error's type, SQLSTATE and the names of
    the constraint, table and column (psycopg's `diag`; never its message, detail, hint,
    context or query, which quote values), SQLite's error name, or an OSError's errno name."""
    parts: list[str] = []
    orig = getattr(error, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's error
    source = orig if isinstance(orig, BaseException) else error
    if source is not error:
        parts.append(f"from {_qualname(type(source))}")
    sqlstate = getattr(source, "sqlstate", None)
    if isinstance(sqlstate, str) and _SQLSTATE.match(sqlstate):
        parts.append(f"sqlstate={sqlstate}")
    diag = getattr(source, "diag", None)
    if diag is not None:
        for name in ("constraint_name", "table_name", "column_name"):
            value = getattr(diag, name, None)
            if isinstance(value, str) and _IDENTIFIER.match(value):
                parts.append(f"{name.removesuffix('_name')}={value}")
    sqlite_name = getattr(source, "sqlite_errorname", None)
    if isinstance(sqlite_name, str) and _SQLITE_NAME.match(sqlite_name):
        parts.append(sqlite_name)
    code = getattr(source, "errno", None)
    if isinstance(source, OSError) and isinstance(code, int) and code in errno.errorcode:
        parts.append(errno.errorcode[code])
    return "message withheld" + (f" ({', '.join(parts)})" if parts else "")


def withhold(
    error: BaseException | None, _seen: dict[int, Withheld] | None = None
) -> BaseException | None:
    """The exception as it may be logged: its chain (causes and contexts) and tracebacks kept,
    every message replaced by `describe`."""
    if error is None or isinstance(error, Withheld):
        return error
    seen = {} if _seen is None else _seen
    if id(error) in seen:
        return seen[id(error)]
    surrogate = _surrogate_type(type(error))(describe(error))
    seen[id(error)] = surrogate
    surrogate.__traceback__ = error.__traceback__
    surrogate.__cause__ = withhold(error.__cause__, seen)
    surrogate.__context__ = withhold(error.__context__, seen)
    surrogate.__suppress_context__ = error.__suppress_context__
    return surrogate


def withhold_exc_info(ei: Any) -> Any:
    if isinstance(ei, tuple) and len(ei) == 3 and isinstance(ei[1], BaseException):
        surrogate = withhold(ei[1])
        assert surrogate is not None
        return (type(surrogate), surrogate, surrogate.__traceback__)
    return ei


def _strip_query(text: str) -> str:
    """`GET /v1/subjects?q=Jayden Okafor HTTP/1.1` → `GET /v1/subjects HTTP/1.1` (a decoded
    query may hold spaces: it ends at the protocol, or at the end of the text)."""
    head, mark, tail = text.partition("?")
    if not mark:
        return text
    protocol = re.search(r" HTTP/\d(?:\.\d)?", tail)
    return head + (tail[protocol.start() :] if protocol else "")


def _map_args(args: Any, change: Any) -> Any:
    if isinstance(args, tuple):
        return tuple(change(a) for a in args)
    if isinstance(args, Mapping):
        return {k: change(v) for k, v in args.items()}
    return args


def _exception_arg(value: Any) -> Any:
    if isinstance(value, BaseException):
        return f"<{_qualname(type(value))}: {describe(value)}>"
    return value


def _query_arg(value: Any) -> Any:
    return _strip_query(value) if isinstance(value, str) else value


_INVALID_REQUEST = re.compile(r"^(Invalid request from ip=.*?): (.*)$", re.DOTALL)
_AUTH_FAILED = re.compile(r'^Authenticate .* via "(.*)" failed$', re.DOTALL)


def redact(record: logging.LogRecord) -> None:
    """Make one record safe to write (see the module's docstring)."""
    name = record.name
    if record.exc_info:
        record.exc_info = withhold_exc_info(record.exc_info)
        record.exc_text = None
    if isinstance(record.msg, BaseException):
        record.msg = _exception_arg(record.msg)
    if record.args:
        record.args = _map_args(record.args, _exception_arg)
    if name.startswith("sqlalchemy.engine") and record.msg == "Row %r":
        record.args = (WITHHELD,)  # result rows: every column of what was read
    elif name.startswith(("urllib3", "werkzeug")) and record.args:
        record.args = _map_args(record.args, _query_arg)
    elif name.startswith("authlib") and isinstance(record.msg, str):
        if record.msg.startswith("Issue token %r") and isinstance(record.args, tuple):
            record.args = (WITHHELD, *record.args[1:])  # the token itself is a credential
        failed = _AUTH_FAILED.match(record.msg)
        if failed:  # the client id as sent: whatever was typed, possibly a secret
            record.msg = f'Authenticate {WITHHELD} via "{failed.group(1)}" failed'
    elif name.startswith("gunicorn") and isinstance(record.msg, str):
        invalid = _INVALID_REQUEST.match(record.msg)
        if invalid:  # gunicorn quotes the refused request line or header, query and all
            kind = re.split(r"[:'\"(]", invalid.group(2), maxsplit=1)[0].strip()
            record.msg = f"{invalid.group(1)}: {kind} (details withheld)"
        elif record.msg.startswith("Error handling request") and record.args:
            record.args = _map_args(record.args, _query_arg)


def install_redaction() -> None:
    """Redact every record this process makes, before any handler (or test) sees it."""
    current = logging.getLogRecordFactory()
    if getattr(current, "_casehub_redacting", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        redact(record)
        return record

    factory._casehub_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


# -- gunicorn --------------------------------------------------------------------------------
# What a text access line may show: never `r` or `q` (the query string), `f` (the referrer),
# `u` (the Basic-auth user) or request headers (`{authorization}i`).
ACCESS_ATOMS = frozenset(
    {"h", "t", "m", "U", "H", "s", "B", "b", "M", "D", "L", "T", "p", "{x-request-id}o"}
)
_ATOM = re.compile(r"%\(([^)]*)\)")


def environ_format(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    fmt = env.get("CASEHUB_LOG_FORMAT", DEFAULT_FORMAT).lower()
    if fmt not in LOG_FORMATS:
        raise RuntimeError(f"CASEHUB_LOG_FORMAT must be json or text, not {fmt!r}")
    return fmt


class GunicornLogger(glogging.Logger):
    """gunicorn's logger in casehub's format: `logger_class` in deploy/gunicorn.conf.py."""

    def setup(self, cfg: Any) -> None:
        used = set(_ATOM.findall(cfg.access_log_format))
        if not used <= ACCESS_ATOMS:
            raise RuntimeError(
                "access_log_format may not use " + ", ".join(sorted(used - ACCESS_ATOMS))
            )
        self.casehub_format = environ_format()
        install_redaction()
        super().setup(cfg)
        if self.casehub_format == "json":
            for log in (self.error_log, self.access_log):
                for handler in log.handlers:
                    if getattr(handler, "_gunicorn", False):
                        handler.setFormatter(JsonFormatter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        try:
            if self.casehub_format == "json":
                self.access_log.info("access", extra=access_fields(resp, environ, request_time))
            else:
                atoms = self.atoms(resp, req, environ, request_time)
                allowed = {key: atoms.get(key, "-") for key in ACCESS_ATOMS}
                self.access_log.info(self.cfg.access_log_format, glogging.SafeAtoms(allowed))
        except Exception:
            self.error_log.exception("could not write an access log line")


def access_fields(resp: Any, environ: Mapping[str, Any], request_time: Any) -> dict[str, Any]:
    """An access line's keys besides BASE_FIELDS: what gunicorn knows of the exchange, and
    what the app left in the environ (the route template, the caller)."""
    status = resp.status
    if isinstance(status, str):
        status = status.split(None, 1)[0]
    try:
        status = int(status)
    except (TypeError, ValueError):
        status = None
    request_id = None
    for header, value in resp.headers or ():
        if header.lower() == "x-request-id":
            request_id = value or None
    app = environ.get(ENVIRON_KEY) or {}
    return {
        "request_id": request_id,
        "client_id": app.get("client_id"),
        "agency": app.get("agency"),
        "method": environ.get("REQUEST_METHOD"),
        "route": app.get("route"),
        "status": status,
        "duration_ms": round(request_time.total_seconds() * 1000, 1),
        "remote_addr": environ.get("REMOTE_ADDR"),
        "bytes": getattr(resp, "sent", None),
    }
