"""The test tree keeps its shape (issue 12): helpers live in tests/support/ or a folder's
helper modules, never in a test module that others import; the README's layout names
every test folder."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent


def _imported_modules(path: Path) -> set[str]:
    package = ".".join(path.relative_to(REPO).parent.parts)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_test_module_imports_another_test_module() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for module in _imported_modules(path):
            if module.startswith("tests.") and module.rsplit(".", 1)[-1].startswith("test_"):
                offenders.append(f"{path.relative_to(REPO)} imports {module}")
    assert offenders == [], "move the shared helpers into tests/support/:\n" + "\n".join(
        offenders)


def test_the_readme_layout_names_every_test_folder() -> None:
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("## Tests")]
    folders = sorted(p.name for p in TESTS.iterdir()
                     if p.is_dir() and not p.name.startswith((".", "__")))
    assert [f for f in folders if f"tests/{f}/" not in layout] == []
