"""Tier 0: rt/core and rt/transports are pure (docs/architecture.md section 1).

Importing them, in a fresh interpreter, loads no I/O or async framework
and no layer to their right.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Top-level names that must not be loaded, with their submodules.
FORBIDDEN = (
    "trio",
    "quart",
    "quart_trio",
    "hypercorn",
    "sqlite3",
    "_sqlite3",
    "socket",
    "_socket",
    "ssl",
    "_ssl",
    "asyncio",
    "_asyncio",
    "httpx",
    "trio_websocket",
    "anyio",
)
# Layers to the right of core and transports. (rt/__init__.py loads rt.config
# for the public API: a frozen dataclass, checked by FORBIDDEN like the rest.)
FORBIDDEN_RT = ("rt.store", "rt.hub", "rt.service", "rt.web", "rt.cli")


def pure_modules() -> list[str]:
    """Every module of the packages rt.core and rt.transports, from their files."""
    names = []
    for package in ("core", "transports"):
        directory = ROOT / "rt" / package
        names.append(f"rt.{package}")
        names += [
            f"rt.{package}.{p.stem}" for p in sorted(directory.glob("*.py")) if p.stem != "__init__"
        ]
    return names


def loaded_modules(code: str) -> set[str]:
    """sys.modules after running `code` in a fresh interpreter like this one."""
    script = code + "\nimport sys as _s\nprint(repr(sorted(_s.modules)))\n"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return set(ast.literal_eval(proc.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def bare() -> set[str]:
    return loaded_modules("pass")


@pytest.fixture(scope="module")
def pure() -> set[str]:
    imports = "\n".join(f"import {name}" for name in pure_modules())
    return loaded_modules(imports)


def _matches(module: str, names: tuple[str, ...]) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def test_the_module_list_covers_the_pure_layers() -> None:
    names = pure_modules()
    for expected in (
        "rt.core.codec",
        "rt.core.errors",
        "rt.core.events",
        "rt.core.grammar",
        "rt.core.ops",
        "rt.core.ratelimit",
        "rt.transports.base",
        "rt.transports.sse",
        "rt.transports.websocket",
    ):
        assert expected in names


def test_pure_modules_were_all_imported(pure: set[str]) -> None:
    assert set(pure_modules()) <= pure


def test_bare_interpreter_loads_none_of_the_forbidden(bare: set[str]) -> None:
    # If this fails, the interpreter itself preloads one of them and the
    # check below would have to subtract it; say so rather than hide it.
    assert not {m for m in bare if _matches(m, FORBIDDEN)}


def test_core_and_transports_import_no_io_or_async(pure: set[str], bare: set[str]) -> None:
    added = pure - bare
    forbidden = sorted(m for m in added if _matches(m, FORBIDDEN))
    assert forbidden == []


def test_core_and_transports_import_no_layer_to_their_right(pure: set[str]) -> None:
    assert sorted(m for m in pure if _matches(m, FORBIDDEN_RT)) == []


def test_the_check_can_fail() -> None:
    """Positive control: the same probe sees trio when something imports it."""
    seen = loaded_modules("import rt.core\nimport rt.hub")
    assert "trio" in seen
    assert "rt.hub.memory" in seen


def test_probe_sees_what_was_imported(pure: set[str], bare: set[str]) -> None:
    assert "sys" in bare and "rt.core" not in bare
    assert "orjson" in pure  # the codec's one dependency
