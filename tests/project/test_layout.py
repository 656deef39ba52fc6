"""The floor plan holds: short functions and modules, hints on public functions, and an installed imgsearch that
brings only `imgsearch*` import names and runs from its wheel outside the repository."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support import REPO

MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450
CODE = ["imgsearch", "indexer", "search_api", "ui", "evaluation", "bench"]


def code_files() -> list[Path]:
    return sorted(path for folder in CODE for path in (REPO / folder).rglob("*.py"))


def functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_or_module_outside_tests_is_too_long():
    too_long = []
    for path in code_files():
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(REPO)}: {len(source.splitlines())} lines")
        for node in functions(ast.parse(source)):
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            if node.end_lineno - first + 1 > MAX_FUNCTION_LINES:
                too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {node.end_lineno - first + 1}")
    assert not too_long


def public_functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Module-level functions and methods of public classes whose names do not start with '_'."""
    found = []
    for node in tree.body:
        members = node.body if isinstance(node, ast.ClassDef) and not node.name.startswith("_") else [node]
        found += [
            m for m in members if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and not m.name.startswith("_")
        ]
    return found


def test_public_functions_have_type_hints():
    missing = []
    for path in code_files():
        for node in public_functions(ast.parse(path.read_text())):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            args += [a for a in (node.args.vararg, node.args.kwarg) if a]
            bare = [a.arg for a in args if a.annotation is None and a.arg not in ("self", "cls")]
            if bare or node.returns is None:
                missing.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not missing


@pytest.mark.slow
def test_the_wheel_installs_only_imgsearch_and_runs_outside_the_repository(tmp_path):
    """`pip wheel .` gives a wheel whose only import name is imgsearch; installed into a folder of its own and run
    from elsewhere, `imgsearch models` lists the presets with their measured speeds (package data)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next((tmp_path / "dist").glob("imgsearch-*.whl"))
    names = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {name for name in names if not name.endswith((".dist-info", ".data"))} == {"imgsearch"}
    entry_points = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "imgsearch = imgsearch.cli:main" in entry_points

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, imgsearch; from imgsearch.cli import main; print(imgsearch.__file__); "
            "sys.argv = ['imgsearch', 'models']; sys.exit(main())",
        ],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith(str(target))  # the installed copy ran, not the repository's
    assert "clip-ViT-B-32" in run.stdout
    assert "Measured 20" in run.stdout  # the speeds, shipped as package data, with their date
