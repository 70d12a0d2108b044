"""Refresh the vendored front-end files from the npm registry at their pinned versions.

    python agentstream/ui/static/vendor/refresh.py          # download, replace, print sha256
    python agentstream/ui/static/vendor/refresh.py --check  # exit 1 if a file differs

Uses ``npm pack`` (the registry's tarball of that exact version) only at development time:
installing AgentStream never runs Node, the files below are committed. Each package's
LICENSE is copied next to its files. VENDOR.md lists versions and sha256 sums.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# package, version, {file in the package: name here}
PINNED: list[tuple[str, str, dict[str, str]]] = [
    (
        "preact",
        "10.29.8",
        {
            "dist/preact.min.js": "preact-10.29.8.min.js",
            "hooks/dist/hooks.umd.js": "preact-hooks-10.29.8.umd.js",
            "LICENSE": "preact.LICENSE",
        },
    ),
    ("htm", "3.1.1", {"dist/htm.umd.js": "htm-3.1.1.umd.js", "LICENSE": "htm.LICENSE"}),
    (
        "cytoscape",
        "3.35.0",
        {"dist/cytoscape.min.js": "cytoscape-3.35.0.min.js", "LICENSE": "cytoscape.LICENSE"},
    ),
    (
        "cytoscape-dagre",  # its dist bundles @dagrejs/dagre 3.x and @dagrejs/graphlib
        "4.0.1",
        {
            "dist/cytoscape-dagre.min.js": "cytoscape-dagre-4.0.1.min.js",
            "LICENSE": "cytoscape-dagre.LICENSE",
        },
    ),
    ("@dagrejs/dagre", "3.1.4", {"LICENSE": "dagre.LICENSE"}),
    ("@dagrejs/graphlib", "4.0.8", {"LICENSE": "graphlib.LICENSE"}),
    (
        "uplot",  # charts of the dashboards and the SQL workspace
        "1.6.32",
        {
            "dist/uPlot.iife.min.js": "uplot-1.6.32.iife.min.js",
            "dist/uPlot.min.css": "uplot-1.6.32.min.css",
            "LICENSE": "uplot.LICENSE",
        },
    ),
    (
        "codemirror",  # the SQL editor: version 5 is one plain script, no bundler (docs/ui.md)
        "5.65.21",
        {
            "lib/codemirror.js": "codemirror-5.65.21.js",
            "lib/codemirror.css": "codemirror-5.65.21.css",
            "mode/sql/sql.js": "codemirror-5.65.21-sql.js",
            "LICENSE": "codemirror.LICENSE",
        },
    ),
]


def _pack(name: str, version: str, into: Path) -> Path:
    out = subprocess.run(
        ["npm", "pack", f"{name}@{version}", "--silent", "--pack-destination", str(into)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return into / out.splitlines()[-1]


def fetch() -> dict[str, bytes]:
    """name here -> bytes, straight from the registry tarballs."""
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, version, wanted in PINNED:
            tgz = _pack(name, version, Path(tmp))
            with tarfile.open(tgz) as tar:
                for inner, here in wanted.items():
                    member = tar.extractfile(f"package/{inner}")
                    if member is None:
                        raise SystemExit(f"{name}@{version} has no {inner}")
                    files[here] = member.read()
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare only, change nothing")
    args = ap.parse_args()
    files = fetch()
    differ = [
        n for n, b in files.items() if not (HERE / n).is_file() or (HERE / n).read_bytes() != b
    ]
    if args.check:
        for n in differ:
            print(f"differs from the registry: {n}")
        return 1 if differ else 0
    rows = []
    for n, b in sorted(files.items()):
        (HERE / n).write_bytes(b)
        rows.append(f"| {n} | {len(b):,} | `{hashlib.sha256(b).hexdigest()}` |")
    pins = "\n".join(f"- `{name}@{version}`" for name, version, _ in PINNED)
    (HERE / "VENDOR.md").write_text(
        "# Vendored front-end files\n\n"
        "Written by `refresh.py` from the npm registry (`npm pack`). Do not edit by hand.\n\n"
        f"{pins}\n\n| file | bytes | sha256 |\n|---|---:|---|\n" + "\n".join(rows) + "\n"
    )
    print(f"{len(files)} files written ({len(differ)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
