"""JSON Schema for every event type, committed under schemas/json/ for non-Python producers.

``python -m schemas.jsonschema`` rewrites the files; a test fails when they are stale.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from schemas.envelope import EVENT_CLASSES, Event
from schemas.upcasting import DEFAULT_UPCASTERS

JSON_DIR = Path(__file__).parent / "json"


def render_all() -> dict[str, str]:
    """File name -> JSON text, for every current type, the union, and historical payloads."""
    out: dict[str, str] = {}
    for cls in EVENT_CLASSES:
        out[f"{cls.__struct_config__.tag}.json"] = _dump(msgspec.json.schema(cls))
    out["event.json"] = _dump(msgspec.json.schema(Event))
    for (name, version), payload in sorted(DEFAULT_UPCASTERS.historical.items()):
        out[f"{name}.v{version}.data.json"] = _dump(msgspec.json.schema(payload))
    return out


def _dump(schema: dict) -> str:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def stale_files(directory: Path = JSON_DIR) -> list[str]:
    """Names of files that are missing, different, or no longer generated."""
    wanted = render_all()
    present = {p.name for p in directory.glob("*.json")} if directory.exists() else set()
    stale = [
        n
        for n, text in wanted.items()
        if not (directory / n).exists() or (directory / n).read_text() != text
    ]
    return sorted(stale + sorted(present - wanted.keys()))


def write_all(directory: Path = JSON_DIR) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    wanted = render_all()
    for old in directory.glob("*.json"):
        if old.name not in wanted:
            old.unlink()
    for name, text in wanted.items():
        (directory / name).write_text(text)
    return sorted(wanted)


if __name__ == "__main__":
    for written in write_all():
        print(f"wrote schemas/json/{written}")
