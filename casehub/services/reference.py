"""Reference lists shipped with the service: indicators (signs of exploitation) and categories."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

# Contract categories and their codes in reference/referral-categories.md.
CATEGORIES: dict[str, str] = {
    "cce": "CCE",
    "county_lines": "CCE-CL",
    "cannabis_cultivation": "CCE-CAN",
    "acquisitive_crime": "CCE-ACQ",
    "financial_exploitation": "CCE-FIN",
    "cse": "CSE",
    "trafficking": "TRAF",
    "labour_exploitation": "LAB",
    "domestic_servitude": "DOM",
    "serious_youth_violence": "SYV",
    "gang_association": "GANG",
    "missing": "MISS",
    "online_grooming": "ONL",
    "cuckooing": "CUCK",
    "other": "OTHER-EFH",
}


@cache
def indicator_list() -> dict[str, Any]:
    raw = resources.files("casehub").joinpath("data/indicators.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(raw)
    sources = data["sources"]
    items = [
        {
            "code": item["code"],
            "label": item["label"],
            "group": item["group"],
            "kind": item["kind"],
            "source": ", ".join(item["source"]),
            "source_refs": [{"code": s, "title": sources.get(s, s)} for s in item["source"]],
        }
        for item in data["indicators"]
    ]
    return {"version": data["version"], "items": items}


@cache
def indicator_codes() -> frozenset[str]:
    return frozenset(item["code"] for item in indicator_list()["items"])
