"""One real stack for every UI test in this package (API and browser tests share it)."""

from __future__ import annotations

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
