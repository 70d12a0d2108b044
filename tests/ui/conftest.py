"""One real stack for every UI test in this package (API and browser tests share it)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from uistack import UIStack, build, chromium_or_skip


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIStack]:
    s = build(tmp_path_factory.mktemp("uistack"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright (never a downloaded browser)."""
    path = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path)
        try:
            yield b
        finally:
            b.close()


def _root_conftest() -> ModuleType:
    name = "_agentstream_tests_root_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().parents[1] / "conftest.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def __getattr__(name: str) -> Any:
    """The suite's modules ``from conftest import Broker``; when tests/ui is collected first,
    this file is the module registered as ``conftest``, so it lends the root one's names."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(_root_conftest(), name)
