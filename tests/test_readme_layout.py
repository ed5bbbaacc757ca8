"""README's Layout section names every module of the product's packages, so a newcomer's map
of the code is never out of date."""

from __future__ import annotations

import re

import pytest

from imgsearch.settings import PROJECT_ROOT

PACKAGES = ("imgsearch", "indexer", "webapp")


def layout_text() -> dict[str, str]:
    """The Layout block's text for each top-level folder it describes."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```")[1]
    parts: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        head = re.match(r"^(\S+)/\s", line)
        if head:
            current = head.group(1)
        if current:
            parts[current] = parts.get(current, "") + " " + line
    return parts


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_in_the_layout(package):
    described = layout_text()[package]
    names = {p.stem for p in (PROJECT_ROOT / package).glob("*.py")
             if p.stem not in ("__init__", "__main__")}
    names |= {p.name for p in (PROJECT_ROOT / package).iterdir()
              if p.is_dir() and (p / "__init__.py").exists()}
    missing = sorted(n for n in names if not re.search(rf"\b{re.escape(n)}\b", described))
    assert not missing, f"README's Layout does not name {package}/{missing}"
