"""One real stack for every UI test in this package (API and browser tests share it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from uistack import UIStack, build


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIStack]:
    s = build(tmp_path_factory.mktemp("uistack"))
    try:
        yield s
    finally:
        s.stop()


def chromium_or_skip() -> str:
    """Debian's chromium; a skip with one line of reason, a failure under CI=true."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed (CI=true requires the browser tests)")
        pytest.skip("no chromium on PATH: apt-get install chromium to run the browser tests")
    return path
