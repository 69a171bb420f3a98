"""The architecture holds: one test per import contract (pyproject.toml [tool.importlinter]), and the
size and import rules of ARCHITECTURE.md."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("trainer", "allgui")
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 350
MAX_FUNCTION_LINES = 80
#: the packages whose functions are held to MAX_FUNCTION_LINES
SHORT_FUNCTION_PACKAGES = ("trainer", "allgui")


def _contracts() -> list[str]:
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib is not in Python 3.10)
    return re.findall(r'^id = "([^"]+)"', text.split("[tool.importlinter]", 1)[1], flags=re.M)


def _modules():
    for pkg in PACKAGES:
        yield from sorted((ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("contract", _contracts())
def test_import_contract_is_kept(contract):
    pytest.importorskip("importlinter")
    # in a child process: import-linter reconfigures logging, which would silence the trainer's loggers here
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                          f"sys.exit(lint_imports(limit_to_contracts=({contract!r},), no_cache=True))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": path})
    assert run.returncode == 0, f"import contract {contract!r} is broken:\n{run.stdout[-3000:]}"


def test_the_contracts_cover_layers_qt_cli_and_cycles():
    assert {"trainer-layers", "allgui-layers", "trainer-qt-free", "gui-no-cli", "no-cycles"} <= set(_contracts())


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_classes_stay_small(path):
    src = path.read_text()
    assert len(src.splitlines()) <= MAX_MODULE_LINES, f"{path.name}: over {MAX_MODULE_LINES} lines"
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ClassDef):
            n = node.end_lineno - node.lineno + 1
            assert n <= MAX_CLASS_LINES, f"{path.name}: class {node.name} has {n} lines"


@pytest.mark.parametrize("path", [p for pkg in SHORT_FUNCTION_PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_stay_short(path):
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def _function_level_imports(path: Path):
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield node.lineno, lines


def _has_reason(lineno: int, lines: list[str]) -> bool:
    """A comment on the import, on the line above, or on the first import of its block."""
    i = lineno - 1
    while True:
        if "#" in lines[i] or (i > 0 and lines[i - 1].strip().startswith("#")):
            return True
        if i > 0 and lines[i - 1].strip().startswith(("import ", "from ")):
            i -= 1
            continue
        return False


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_function_level_imports_say_why(path):
    missing = [n for n, lines in _function_level_imports(path) if not _has_reason(n, lines)]
    assert not missing, (f"{path.name}: imports inside functions at lines {missing} give no reason; import at the "
                         "top, or say in a comment why it must wait (start-up time, a worker thread)")


def test_the_app_never_imports_the_command_line():
    for path in (ROOT / "allgui").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            cli = [n for n in names if n == "trainer.cli" or n.startswith(("trainer.cli.", "trainer.finetune"))]
            assert not cli, path


def test_one_trust_boundary_every_skops_member_is_read_through_the_allow_list():
    # a skops member is rebuilt in one place (trust.py, after legacy.py renames old type names); nothing
    # else reads a member's schema or its arrays by itself (as a numpy read-out of a model once did)
    readers = {str(p.relative_to(ROOT)) for p in _modules()
               if re.search(r"skops_io\.loads?\(|skops\.io\.loads?\(|schema\.json", p.read_text())}
    assert readers == {"trainer/inference/bundle/trust.py", "trainer/inference/bundle/legacy.py"}
