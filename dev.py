#!/usr/bin/env python3
"""Set up and run casehub from a fresh checkout with nothing but Python 3.11+ (stdlib only).

    python3 dev.py demo   # .venv, install, migrate, demo data, serve on http://127.0.0.1:5000
                          # with a webhook worker and a receiver printing verified deliveries
    python3 dev.py test   # .venv, install with test extras, ruff, then the whole test suite

Extra arguments after `test` go to pytest (e.g. `python3 dev.py test tests/test_ops.py -x`).
CASEHUB_TEST_DATABASE_URL picks PostgreSQL for the tests; without it they run on SQLite.
`test` also installs the OpenAPI linters pinned in .ci/tools when npm is on PATH; without npm,
tests/test_openapi_lint.py is skipped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import venv
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"  # casehub needs a POSIX system (gunicorn, fcntl)
PYTHON = BIN / "python"
TOOLS = ROOT / ".ci" / "tools"  # npm packages the tests run: the OpenAPI linters
NODE_MODULES = TOOLS / "node_modules"
MINIMUM = (3, 11)


def say(message: str) -> None:
    print(f"dev.py: {message}", flush=True)


def run(command: Sequence[str | Path], **kwargs: object) -> int:
    # Every command is built in this file from fixed parts; nothing comes from a shell.
    argv = [str(part) for part in command]
    return subprocess.call(argv, cwd=ROOT, **kwargs)  # type: ignore[arg-type]  # noqa: S603


def check(command: Sequence[str | Path]) -> None:
    status = run(command)
    if status != 0:
        say(f"`{' '.join(str(p) for p in command)}` failed with exit status {status}")
        sys.exit(status)


def ensure_venv() -> None:
    if sys.version_info < MINIMUM:
        sys.exit(f"dev.py: casehub needs Python {'.'.join(map(str, MINIMUM))} or newer")
    if not PYTHON.exists():
        say(f"creating {VENV.relative_to(ROOT)}")
        try:
            venv.EnvBuilder(with_pip=True).create(VENV)
        except (OSError, subprocess.CalledProcessError) as error:
            sys.exit(
                f"dev.py: could not create {VENV} ({error}). On Debian and Ubuntu the venv "
                "module lives in a separate package: apt install python3-venv"
            )


def ensure_installed(extra: str | None) -> None:
    """pip install -e the project, skipped when pyproject.toml has not changed since last time."""
    target = f".[{extra}]" if extra else "."
    fingerprint = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = VENV / f".casehub-installed-{extra or 'base'}"
    if stamp.exists() and stamp.read_text().strip() == fingerprint:
        return
    say(f"installing casehub ({target}) into {VENV.relative_to(ROOT)}")
    check([PYTHON, "-m", "pip", "install", "-qq", "--disable-pip-version-check", "-e", target])
    stamp.write_text(fingerprint + "\n")


def ensure_node_tools() -> None:
    """npm ci the OpenAPI linters into .ci/tools, skipped when package-lock.json has not changed."""
    npm = shutil.which("npm")
    if npm is None:
        say("npm is not on PATH, so the OpenAPI lint tests (test_openapi_lint.py) will be skipped")
        return
    fingerprint = hashlib.sha256((TOOLS / "package-lock.json").read_bytes()).hexdigest()
    stamp = NODE_MODULES / ".casehub-installed"
    if stamp.exists() and stamp.read_text().strip() == fingerprint:
        return
    say(f"installing the OpenAPI linters (npm ci) into {NODE_MODULES.relative_to(ROOT)}")
    # --ignore-scripts: the one install script in the tree only reports the download to an
    # analytics service; the linters need none. Quiet: npm's errors only.
    quiet = ["--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"]
    status = run([npm, "ci", "--prefix", TOOLS, *quiet], stdout=subprocess.DEVNULL)
    if status != 0:
        # The Python tests still run; the lint tests skip, or fail under CI, and say why.
        say(f"npm ci failed with exit status {status}: going on without the OpenAPI linters")
        return
    stamp.write_text(fingerprint + "\n")


def casehub(*args: str) -> list[str | Path]:
    return [BIN / "casehub", *args]


DEMO_RECEIVER_PORT = 5001


def demo() -> int:
    ensure_venv()
    ensure_installed(None)
    # The demo's webhook receiver is on loopback over http: allowed for demos only.
    os.environ["CASEHUB_WEBHOOKS_ALLOW_PRIVATE"] = "1"
    # Lines a person reads in a terminal, unless asked otherwise (production logs JSON).
    os.environ.setdefault("CASEHUB_LOG_FORMAT", "text")
    secret_file = ROOT / "instance" / "demo-webhook-secret"
    receiver_url = f"http://127.0.0.1:{DEMO_RECEIVER_PORT}/webhooks"
    check(casehub("db", "upgrade"))
    check(casehub("demo", "--webhook-url", receiver_url, "--webhook-secret-file", str(secret_file)))
    say(
        "serving on http://127.0.0.1:5000, with a webhook worker and the demo receiver on "
        f"port {DEMO_RECEIVER_PORT} (Ctrl-C stops all three)"
    )
    config = ROOT / "deploy" / "gunicorn.conf.py"
    # Three processes, stopped together: Ctrl-C reaches the whole process group, and SIGTERM
    # (from a supervisor or `timeout`) is passed on to each, so nothing is left behind.
    children = [
        spawn(
            [
                PYTHON,
                "-m",
                "casehub.webhooks.receiver",
                "--port",
                str(DEMO_RECEIVER_PORT),
                "--secret-file",
                str(secret_file),
            ]
        ),
        spawn(casehub("webhooks", "worker")),
        spawn([BIN / "gunicorn", "-c", config, "wsgi:app"]),
    ]

    def stop(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    server = children[-1]
    try:
        status = server.wait()
    except KeyboardInterrupt:  # the children got the same Ctrl-C
        status = server.wait()
    stop(signal.SIGTERM, None)
    for child in children:
        child.wait()
    return status


def spawn(command: Sequence[str | Path]) -> subprocess.Popen[bytes]:
    argv = [str(part) for part in command]
    return subprocess.Popen(argv, cwd=ROOT)  # noqa: S603 - fixed commands built in this file


def xdist_workers() -> list[str]:
    """Two pytest-xdist workers on machines with two or more cores, else run in-process."""
    workers = os.environ.get("CASEHUB_TEST_WORKERS")
    if workers is None:
        workers = "2" if (os.cpu_count() or 1) >= 2 else "0"
    return [] if workers in ("0", "1") else ["-n", workers]


def test(pytest_args: list[str]) -> int:
    ensure_venv()
    ensure_installed("test")
    ensure_node_tools()
    database = os.environ.get("CASEHUB_TEST_DATABASE_URL")
    say(f"ruff check, then pytest on {'PostgreSQL' if database else 'SQLite'}")
    lint = run([PYTHON, "-m", "ruff", "check", "."])
    status = run([PYTHON, "-m", "pytest", *xdist_workers(), *pytest_args])
    if lint != 0:
        # The tests still run, so one command shows everything, but lint failures fail the build.
        say("ruff found problems (listed above the test run): failing")
        return status or lint
    return status


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__)
        return 2
    if argv[0] == "demo":
        return demo()
    return test(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
