"""The committed OpenAPI document passes Spectral's `spectral:oas` and Redocly's `recommended`.

The linters are the npm packages pinned in .ci/tools (`python3 dev.py test` installs them with
`npm ci --prefix .ci/tools` when npm is on PATH); their rules are set in .spectral.yaml and
redocly.yaml. A finding of severity error fails; warnings are listed in the test's output and
counted in the summary line, and allowed. Without the tools these tests skip, except in CI
(CI=true), which always installs them. Both linters run offline: nothing here reaches a network.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".ci" / "tools" / "node_modules" / ".bin"
DOCUMENT = "openapi/casehub.json"
INSTALL = (
    "Install them with `npm ci --prefix .ci/tools` (python3 dev.py test does this when npm is "
    "on PATH)."
)
TIMEOUT = 120
# Redocly CLI sends usage data and checks for a newer release unless told not to (its docs:
# REDOCLY_TELEMETRY=off, which redocly.yaml also says; the update check reads the other two).
OFFLINE = {
    "REDOCLY_TELEMETRY": "off",
    "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true",
    "REDOCLY_SUPPRESS_NOTIFICATIONS": "true",
    "NO_COLOR": "1",
}
# Spectral's numeric severities.
SPECTRAL_SEVERITY = {0: "error", 1: "warn", 2: "info", 3: "hint"}


class Finding(NamedTuple):
    severity: str  # "error", or a lesser one: "warn", "info", "hint"
    rule: str
    path: str  # a JSON pointer into the document
    line: int  # 1-based
    message: str

    def __str__(self) -> str:
        return f"  {self.rule}  {self.path} (line {self.line}): {self.message}"


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.exists():
        missing = f"{path.relative_to(ROOT)} is not installed. {INSTALL}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing} CI installs the OpenAPI linters, so here this is a failure.")
        pytest.skip(missing)
    return path


def run(command: list[str | Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        cwd=ROOT,
        env={**os.environ, **OFFLINE},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def parse(result: subprocess.CompletedProcess[str], what: str) -> Any:
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"{what} printed no JSON report (exit status {result.returncode}).\n"
            f"stdout: {result.stdout[:2000]}\nstderr: {result.stderr[-4000:]}"
        )


def pointer(path: list[Any]) -> str:
    """["paths", "/healthz", "get"] → #/paths/~1healthz/get (RFC 6901, as Redocly writes it)."""
    return "#/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path)


def redocly_finding(problem: dict[str, Any]) -> Finding:
    where = (problem.get("location") or [{}])[0]
    return Finding(
        problem["severity"],
        problem["ruleId"],
        where.get("pointer", "#"),
        where.get("start", {}).get("line", 0),
        problem["message"],
    )


def judge(
    linter: str, findings: list[Finding], record_property: Callable[[str, object], None]
) -> None:
    errors = [f for f in findings if f.severity == "error"]
    others = [f for f in findings if f.severity != "error"]
    by_rule = Counter(f"{f.severity} {f.rule}" for f in findings)
    counts = {"errors": len(errors), "warnings": len(others)}
    record_property("figures", (f"openapi lint {linter}", counts))
    # Shown by pytest with the failure, or with -rP when the test passes.
    print(f"{linter}: {len(errors)} errors, {len(others)} warnings on {DOCUMENT}")
    for key, count in sorted(by_rule.items()):
        print(f"  {count:4}  {key}")
    for finding in others:
        print(f"{finding.severity}{finding}")
    assert not errors, (
        f"{linter} finds {len(errors)} errors in {DOCUMENT} (rule, path, message):\n"
        + "\n".join(map(str, errors))
        + "\nFix the generator (casehub/), then: casehub openapi export openapi/casehub.json"
    )


def test_spectral_oas_ruleset_finds_no_errors(record_property: Callable[..., None]) -> None:
    spectral = tool("spectral")
    # -q: with it stdout is the JSON report alone (without, a "No results" line follows it).
    result = run([spectral, "lint", DOCUMENT, "--ruleset", ".spectral.yaml", "-f", "json", "-q"])
    report = parse(result, "spectral lint")
    # Exit status 1 means findings of severity error, reported in the JSON; anything else failed.
    assert result.returncode in (0, 1), f"spectral lint failed:\n{result.stderr[-4000:]}"
    assert isinstance(report, list), f"spectral lint: unexpected report {report!r:.500}"
    findings = [
        Finding(
            SPECTRAL_SEVERITY.get(item["severity"], str(item["severity"])),
            item["code"],
            pointer(item["path"]),
            item["range"]["start"]["line"] + 1,
            item["message"],
        )
        for item in report
    ]
    judge("spectral (spectral:oas)", findings, record_property)


def test_redocly_recommended_ruleset_finds_no_errors(record_property: Callable[..., None]) -> None:
    redocly = tool("redocly")
    # The default stops reporting after 100 problems; a broken redocly.yaml is an error.
    limits = ["--max-problems=100000", "--lint-config=error"]
    result = run([redocly, "lint", DOCUMENT, "--config", "redocly.yaml", "--format=json", *limits])
    report = parse(result, "redocly lint")
    assert result.returncode in (0, 1), f"redocly lint failed:\n{result.stderr[-4000:]}"
    findings = [redocly_finding(problem) for problem in report["problems"]]
    counted = sum(1 for f in findings if f.severity == "error")
    assert counted == report["totals"]["errors"], f"redocly lint: totals {report['totals']}"
    judge("redocly (recommended)", findings, record_property)
