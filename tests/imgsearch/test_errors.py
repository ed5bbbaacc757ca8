"""Every error the product raises on purpose has a consequence: bad input, unavailable or
conflict (imgsearch/errors.py), which the web app and the command line map."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import imgsearch
import indexer
from imgsearch.errors import BadInput, Conflict, Unavailable

BASES = (BadInput, Unavailable, Conflict)
# Errors of the local node's own command line (python -m imgsearch.localnode), which is no
# front end of the product's requests.
OUTSIDE = {"LocalNodeError"}


def product_errors() -> list[type[Exception]]:
    found = {}
    for package in (imgsearch, indexer):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, Exception) and cls.__module__ == info.name \
                        and cls not in BASES:
                    found[cls.__qualname__] = cls
    return [cls for name, cls in sorted(found.items()) if name not in OUTSIDE]


def test_errors_are_found():
    names = {cls.__name__ for cls in product_errors()}
    assert {"ImageError", "StoreUnavailable", "ExplainUnavailable", "UsageError"} <= names


@pytest.mark.parametrize("cls", product_errors(), ids=lambda cls: cls.__name__)
def test_every_error_has_exactly_one_consequence(cls):
    if issubclass(cls, KeyboardInterrupt):  # SIGTERM as Ctrl-C: the run's own stop
        return
    assert sum(issubclass(cls, base) for base in BASES) == 1, cls.__mro__
    assert isinstance(cls.code, str) and cls.code
