"""The README's promises: its producer example runs, its commands exist, CI runs its commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_starts_with_install_then_demo_then_tests():
    first, second = _blocks("bash")[:2]
    assert first.splitlines()[0].startswith('pip install -e ".[dev]" -c constraints.txt')
    assert first.splitlines()[1].startswith("agentstream demo")
    assert second.strip().startswith("python -m pytest")


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]" -c constraints.txt' in ci
    assert "\npython -m pytest" in ci


def test_python_example_publishes_to_a_real_broker(kafka, tmp_path):
    (example,) = _blocks("python")
    script = tmp_path / "example.py"
    script.write_text(example.replace("127.0.0.1:19092", kafka.bootstrap))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_every_command_in_the_tour_exists():
    tour = _blocks("bash")[2]
    used = {line.split()[1] for line in tour.splitlines() if line.startswith("agentstream ")}
    helptext = subprocess.run(
        [sys.executable, "-m", "agentstream.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    missing = sorted(  # plain click help: "  name   summary" under "Commands:"
        c for c in used if not re.search(rf"^\s+{re.escape(c)}\s", helptext, re.M)
    )
    assert not missing, f"README tour names commands the CLI lacks: {missing}"
