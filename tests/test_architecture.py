"""The import rules of docs/architecture.md, checked on the source (every ``import`` statement,
those inside functions included): the core stands alone, training and index_builder are
siblings on it, nothing imports the demo."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package (folder relative to the root) → top-level modules it must never import
RULES: dict[str, frozenset[str]] = {
    "service": frozenset({"torch", "fastapi", "starlette", "uvicorn", "training",
                          "index_builder", "demo", "bench"}),
    "service/api": frozenset({"torch", "training", "index_builder", "demo", "bench"}),
    "training": frozenset({"index_builder", "demo", "bench", "fastapi"}),
    "index_builder": frozenset({"training", "demo", "bench", "torch", "fastapi"}),
}


def imported_modules(source: str) -> set[str]:
    """The absolute module names a file imports (relative imports stay inside the package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def violations(package: str, forbidden: frozenset[str], root: Path = ROOT) -> list[str]:
    """``file: module`` for each forbidden import under ``package``; a sub-package that has
    its own rule (``service/api`` inside ``service``) is checked by that rule instead."""
    own = [p for p in RULES if p != package and p.startswith(package + "/")]
    out = []
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if any(rel.startswith(p + "/") for p in own):
            continue
        for module in sorted(imported_modules(path.read_text())):
            if module.split(".")[0] in forbidden:
                out.append(f"{rel}: {module}")
    return out


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_follow_the_rules(package: str) -> None:
    assert violations(package, RULES[package]) == []


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    pkg = tmp_path / "service"
    pkg.mkdir()
    (pkg / "bad.py").write_text("def f():\n    import torch.nn\n    from training.x import y\n")
    (pkg / "good.py").write_text("from . import bad\nimport numpy\n")
    assert violations("service", RULES["service"], root=tmp_path) == [
        "service/bad.py: torch.nn", "service/bad.py: training.x"]


def _raised_codes() -> set[str]:
    """The first (code) argument of every ApiError / _BodyRefused raised in service/api."""
    codes = set()
    for path in (ROOT / "service" / "api").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in {"ApiError", "_BodyRefused"} and node.args
                    and isinstance(node.args[0], ast.Constant)):
                codes.add(node.args[0].value)
    return codes


def test_every_error_code_has_its_status_in_the_one_table() -> None:
    from service.api.errors import ERROR_CODES
    from service.imageio import ImageError

    raised = _raised_codes()
    assert {"missing_api_key", "invalid_filter", "request_timeout"} <= raised  # the scan works
    image_codes = {cls.code for cls in [ImageError, *ImageError.__subclasses__()]}
    assert raised | image_codes <= set(ERROR_CODES)
