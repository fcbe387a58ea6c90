"""The runnable examples in docstrings are tests too: they must stay true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import engine

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(engine.__path__, "engine.")
    if m.name not in ("engine.__main__",)
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
