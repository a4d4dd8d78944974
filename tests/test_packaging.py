"""Packaging: the core imports without torch; the serve-only install works."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE_MODULES = [
    "service",
    "service.catalog",
    "service.preprocess",
    "service.imageio",
    "service.artifact",
    "service.settings",
    "service.redis_server",
]


def _core_modules() -> list[str]:
    mods = {f"service.{p.stem}" for p in (REPO / "service").glob("*.py") if p.stem != "__init__"}
    return sorted(set(CORE_MODULES) | mods)


def test_core_imports_without_torch_or_fastapi() -> None:
    code = (
        "import sys\n"
        "for m in ('torch', 'fastapi', 'starlette', 'gensim', 'kornia'):\n"
        "    sys.modules[m] = None  # any import of them now fails\n"
        f"import importlib\nfor m in {_core_modules()!r}:\n    importlib.import_module(m)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_console_scripts_point_at_real_mains() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    import importlib

    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


@pytest.mark.slow
def test_serve_extra_alone_imports_service(tmp_path: Path) -> None:
    """A venv with only the `serve` extra (no torch) imports every core module."""
    if os.environ.get("SKU_SKIP_VENV_TEST"):
        pytest.skip("SKU_SKIP_VENV_TEST is set")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", f"{REPO}[serve]"],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    code = (
        "import importlib, importlib.util\n"
        "assert importlib.util.find_spec('torch') is None, 'torch must not be installed'\n"
        f"for m in {_core_modules()!r}:\n    importlib.import_module(m)\n"
        "import onnxruntime, faiss, redis, fastapi\nprint('ok')\n"
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
