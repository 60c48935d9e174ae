"""The package's shape: stages import downwards only (no cycles, lazy imports included), no import
is allowed to fail silently, and the Python API leaves the process as it found it."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import torch
from monai.data import get_track_meta
from reportlab import rl_config

import cxrscreen
from tests.factory import chest_phantom, make_dicom

PACKAGE = Path(cxrscreen.__file__).parent


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports anywhere in its body (function-level imports too)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                       else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_the_package_modules() -> None:
    graph = import_graph()
    assert "cxrscreen.run" in graph and "cxrscreen.outputs.report" in graph["cxrscreen.run"]
    assert find_cycle(graph) is None


def test_stages_import_downwards() -> None:
    """Outputs never reach back into the pipeline; ingest, qc and preprocess know nothing of later stages."""
    graph = import_graph()
    later = ("cxrscreen.pipeline", "cxrscreen.outputs", "cxrscreen.cli", "cxrscreen.training")
    for name, deps in graph.items():
        if name.startswith(("cxrscreen.ingest", "cxrscreen.qc", "cxrscreen.preprocess", "cxrscreen.prepare",
                            "cxrscreen.model", "cxrscreen.records", "cxrscreen.state")):
            assert not [d for d in deps if d.startswith(later)], name
        if name.startswith(("cxrscreen.outputs", "cxrscreen.explain", "cxrscreen.pages")):
            assert not [d for d in deps if d.startswith(("cxrscreen.pipeline", "cxrscreen.cli"))], name
        if name.startswith(("cxrscreen.pipeline", "cxrscreen.explain", "cxrscreen.pages")):
            # the scoring engine and the explain stage know nothing of what the run writes from their records
            assert not [d for d in deps if d.startswith(("cxrscreen.outputs", "cxrscreen.cli"))], name


def test_no_import_error_is_swallowed() -> None:
    """A broken import must fail loudly, never mean a run without reports that exits 0."""
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                names = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}
                assert not names & {"ImportError", "ModuleNotFoundError"}, f"{path.name}:{node.lineno}"


def test_scan_leaves_the_process_state_as_it_found_it(tmp_path: Path, random_model) -> None:
    from cxrscreen import scan
    from cxrscreen.options import ScanOptions

    for i in range(3):
        make_dicom(tmp_path / "in" / f"{i}.dcm", chest_phantom(seed=i))
    umask = os.umask(0o002)
    os.umask(umask)
    threads = torch.get_num_threads()
    before = (umask, threads, get_track_meta(), rl_config.useA85, torch.backends.quantized.engine)
    try:
        torch.set_num_threads(1)  # not what scoring picks on a 2-core machine
        res = scan(tmp_path / "in", tmp_path / "out", model=random_model, options=ScanOptions(reports="all", workers=0))
        assert res.exit_code == 0
        os.umask(umask := os.umask(umask))
        after = (umask, torch.get_num_threads(), get_track_meta(), rl_config.useA85, torch.backends.quantized.engine)
        assert after == (before[0], 1, *before[2:])
    finally:
        torch.set_num_threads(threads)
