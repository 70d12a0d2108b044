"""A wheel built from this tree carries the UI's templates, scripts, styles and vendored
front-end files with their licences (``[tool.setuptools.package-data]`` in pyproject.toml):
an installed ``agentstream ui`` must not serve a blank page. Builds the wheel offline with
the installed setuptools (no build isolation, no download)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "agentstream" / "ui"
PACKAGES = ("schemas", "streams", "projections", "agentstream")
PIP_WHEEL = (
    sys.executable,
    "-m",
    "pip",
    "wheel",
    "--no-deps",
    "--no-build-isolation",
    "--no-index",
)


def _ui_files() -> set[str]:
    """Every file the UI serves or renders, as a path inside the wheel."""
    out = set()
    for sub in ("templates", "static"):
        for f in (UI / sub).rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
                out.add(f.relative_to(ROOT).as_posix())
    return out


@pytest.mark.integration
def test_the_wheel_contains_the_ui_templates_and_static_files(tmp_path: Path) -> None:
    # a copy of the packaged sources (tracked, plus new untracked files), so that the build
    # never writes into the shared tree
    src = tmp_path / "src"
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    for rel in listed:
        f = ROOT / rel
        if f.is_file() and ("/" not in rel or rel.split("/")[0] in PACKAGES):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(f.read_bytes())
    out = tmp_path / "dist"
    done = subprocess.run(
        [*PIP_WHEEL, "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = out.glob("agentstream-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _ui_files()
    assert {"agentstream/ui/templates/index.html", "agentstream/ui/static/app.js"} <= expected
    assert any(
        n.startswith("agentstream/ui/static/vendor/") and n.endswith(".LICENSE") for n in expected
    )
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel (add them to package-data in pyproject.toml): {missing}"
