"""The layers: which package may import which, no import circles, public faces only.

Every import in ragvl/ and bench/ is read from the source (top-level, inside functions and under
TYPE_CHECKING alike: a lazy import is still an arrow) and checked against ARROWS below, the one
declaration of the design:

    ingest -> models -> store -> retrieval -> indexing ------> api -> cli / server
                                    \\-> answer -----------/

A lower layer never imports a higher one; the run time (models.runtime, models.contract) never
imports the converter; no ragvl module imports the reference stack (torch, transformers,
colpali-engine, peft); a package is imported from outside only through its public face (its
__init__), never a private (_underscore) name; bench imports nothing from tests/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The base every package may use: errors, file helpers, progress reporting.
BASE = {"ragvl.errors", "ragvl.fsutil", "ragvl.progress"}

# package -> the packages it may import (besides itself and BASE).
ARROWS: dict[str, set[str]] = {
    "ragvl.errors": set(),
    "ragvl.fsutil": {"ragvl.errors"},
    "ragvl.progress": set(),
    "ragvl.ingest": set(),
    "ragvl.models.contract": set(),
    "ragvl.models.runtime": {"ragvl.models.contract"},
    "ragvl.models.converter": {"ragvl.models.contract", "ragvl"},  # ragvl: __version__ for the manifest
    "ragvl.models": {"ragvl.models.contract", "ragvl.models.runtime", "ragvl.models.converter"},
    "ragvl.store": {"ragvl.models.contract", "ragvl.models.runtime"},
    "ragvl.retrieval": {"ragvl.store", "ragvl.models.contract", "ragvl.models.runtime"},
    "ragvl.indexing": {"ragvl.retrieval", "ragvl.store", "ragvl.ingest", "ragvl.models.contract",
                       "ragvl.models.runtime"},
    "ragvl.answer": {"ragvl.retrieval", "ragvl.store", "ragvl.models.runtime"},
    "ragvl.evaluate": set(),
    "ragvl.api": {"ragvl.answer", "ragvl.indexing", "ragvl.retrieval", "ragvl.store", "ragvl.ingest",
                  "ragvl.models.contract", "ragvl.models.runtime"},
    "ragvl.server": {"ragvl.api", "ragvl.answer", "ragvl.store", "ragvl.ingest", "ragvl.models.contract",
                     "ragvl.models.runtime"},
    "ragvl.cli": {"ragvl.api", "ragvl.server", "ragvl.evaluate", "ragvl.answer", "ragvl.store", "ragvl.indexing",
                  "ragvl.models.contract", "ragvl.models.runtime", "ragvl.models.converter"},
    "ragvl": {"ragvl.api"},
}
# A package imported from outside it only through these modules (its public face).
FACES = {"ragvl.ingest", "ragvl.models.contract", "ragvl.models.runtime", "ragvl.models.converter", "ragvl.store",
         "ragvl.retrieval", "ragvl.indexing", "ragvl.indexing.distributed", "ragvl.answer", "ragvl.server"}
FORBIDDEN = ("torch", "transformers", "colpali_engine", "peft", "torchvision")


def package_of(module: str) -> str:
    """The unit of ARROWS a module belongs to (the longest declared prefix)."""
    best = "ragvl"
    for p in ARROWS:
        if (module == p or module.startswith(p + ".")) and len(p) > len(best):
            best = p
    return best


def face_of(module: str) -> str | None:
    best = None
    for f in FACES:
        if (module == f or module.startswith(f + ".")) and (best is None or len(f) > len(best)):
            best = f
    return best


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_pkg else parts), is_pkg


def imports(path: Path, module: str, is_pkg: bool) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in `path`, made absolute."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, [a.name for a in node.names], node.lineno))
    return out


def ragvl_graph(root: Path = ROOT) -> dict[str, list[tuple[str, list[str], int, Path]]]:
    graph = {}
    for path in sorted((root / "ragvl").rglob("*.py")):
        module, is_pkg = module_name(path, root)
        graph[module] = [(t, n, line, path) for t, n, line in imports(path, module, is_pkg)]
    return graph


def resolve(target: str, names: list[str], known: set[str]) -> list[str]:
    """The modules an import loads: `from pkg import mod` names a module when pkg.mod is one."""
    hit = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
    rest = len(hit) < len(names) or not names  # some name is not a module: the package itself is read
    return hit + ([target] if target in known and rest else [])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def module_edges(graph) -> dict[str, set[str]]:
    known = set(graph)
    edges: dict[str, set[str]] = {}
    for m, imps in graph.items():
        for target, names, _, _ in imps:
            for dep in resolve(target, names, known):
                if dep != m:
                    edges.setdefault(m, set()).add(dep)
    return edges


def test_every_arrow_between_packages_is_declared():
    bad = []
    for module, imps in ragvl_graph().items():
        src = package_of(module)
        for target, names, line, path in imps:
            if not target.startswith("ragvl"):
                continue
            dst = package_of(target)
            if dst != src and dst not in ARROWS[src] | BASE and not (src in BASE and dst in ARROWS[src]):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {src} -> {dst} ({target})")
    assert not bad, "undeclared arrows:\n" + "\n".join(bad)


def test_the_declared_arrows_have_no_cycle():
    edges = {p: {d for d in deps if d in ARROWS} for p, deps in ARROWS.items()}
    assert cycles(edges) == []


def test_no_import_circle_between_modules():
    assert cycles(module_edges(ragvl_graph())) == []


def test_packages_are_imported_through_their_public_faces_and_no_private_name_crosses():
    bad = []
    for module, imps in ragvl_graph().items():
        for target, names, line, path in imps:
            if not target.startswith("ragvl"):
                continue
            face = face_of(target)
            inside = face is not None and (module == face or module.startswith(face + "."))
            if face and not inside and target != face:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {target} (import it from {face})")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and package_of(target) != package_of(module):
                bad.append(f"{path.relative_to(ROOT)}:{line}: private {private} from {target}")
    assert not bad, "\n".join(bad)


def test_no_ragvl_module_imports_the_reference_stack_and_the_runtime_never_the_converter():
    bad = []
    for module, imps in ragvl_graph().items():
        for target, _, line, path in imps:
            if target.split(".")[0] in FORBIDDEN:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {target}")
            runtime = module.startswith(("ragvl.models.runtime", "ragvl.models.contract"))
            if runtime and target.startswith("ragvl.models.converter"):
                bad.append(f"{path.relative_to(ROOT)}:{line}: the runtime imports {target}")
    assert not bad, "\n".join(bad)


def test_bench_has_no_import_circle_and_imports_nothing_from_tests():
    bench = ROOT / "bench"
    graph, bad = {}, []
    for path in sorted(bench.rglob("*.py")):
        module, is_pkg = module_name(path, bench)
        graph[module] = [(t, n, line, path) for t, n, line in imports(path, module, is_pkg)]
    tests = {p.stem for p in (ROOT / "tests").glob("*.py")}
    for module, imps in graph.items():
        for target, _, line, path in imps:
            if target.split(".")[0] in tests - set(graph) or target.startswith("tests"):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    assert not bad, "bench imports from tests/:\n" + "\n".join(bad)
    assert cycles(module_edges(graph)) == []


def test_the_checker_sees_lazy_relative_and_type_only_imports(tmp_path):
    """The scanner above catches the forms an import can take, so a passing check means something."""
    pkg = tmp_path / "ragvl" / "store"
    pkg.mkdir(parents=True)
    (tmp_path / "ragvl" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from .a import A\n")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\nA = 1\n")
    (pkg / "b.py").write_text("def f():\n    from ..retrieval import _secret\n    from . import a\n")
    graph = ragvl_graph(tmp_path)
    assert {t for t, _, _, _ in graph["ragvl.store.b"]} == {"ragvl.retrieval", "ragvl.store"}
    assert cycles(module_edges(graph)) == [["ragvl.store.a", "ragvl.store.b"]]
    assert package_of("ragvl.store.b") == "ragvl.store" and "ragvl.retrieval" not in ARROWS["ragvl.store"]
    with pytest.raises(AssertionError):
        assert cycles({"x": {"y"}, "y": {"x"}}) == []


def test_no_two_modules_share_a_name():
    """A name says what a thing is: `search.py` in two packages, or a module named like a
    package, would make a reader (and a traceback) guess which one is meant."""
    seen: dict[str, list[str]] = {}
    for path in sorted((ROOT / "ragvl").rglob("*.py")):
        name = path.parent.name if path.name == "__init__.py" else path.stem
        seen.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert {n: ps for n, ps in seen.items() if len(ps) > 1} == {}
