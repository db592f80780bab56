"""Tier 0: each layer imports only the layers before it (docs/architecture.md).

A static check of every `import` in every module (function-local ones
included), so a wrong-way import fails here even if no test happens to
execute it. The race lab and the Python client sit beside the server and
talk to it over the wire only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PURE = {"rt.core", "rt.transports"}
STORAGE = PURE | {"rt.store", "rt.hub", "rt.config"}
BACKEND = STORAGE | {"rt.backend"}
SERVICE = BACKEND | {"rt.service"}
WEB = SERVICE | {"rt.web", "rt"}
BESIDE = PURE | {"rt.config"}

ALLOWED: dict[str, set[str]] = {
    "rt.core": PURE,
    "rt.transports": PURE,
    "rt.store": STORAGE,
    "rt.hub": STORAGE,
    "rt.backend": BACKEND,
    "rt.service": SERVICE,
    "rt.web": WEB,
    "rt.chaos": BESIDE | {"rt.chaos", "rt.client", "rt.cluster"},
    "rt.cluster": BESIDE | {"rt.cluster"},
    "rt.client": BESIDE | {"rt.client"},
    "rt.bench": BESIDE | {"rt.bench", "rt.cluster", "rt.chaos"},
    "rt.testing": BACKEND | {"rt.testing"},
}


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name == "rt" or name.startswith("rt.")}


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted((ROOT / "rt").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out.append((name.removesuffix(".__init__"), path))
    return out


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_imports_point_only_to_earlier_layers(module: str, path: Path) -> None:
    allowed = ALLOWED.get(package_of(module))
    if allowed is None:
        return  # rt, rt.cli, rt.config, rt.__main__: may use anything
    wrong = sorted(
        name for name in imports_of(path) if package_of(name) not in allowed and name != "rt.config"
    )
    assert wrong == [], f"{module} imports {wrong}, which its layer may not use"


def test_the_check_sees_imports() -> None:
    """Positive control: the web layer imports the service, and the walk finds it."""
    found = imports_of(ROOT / "rt" / "web" / "app.py")
    assert "rt.service" in found
    assert package_of("rt.service.streams") == "rt.service"
