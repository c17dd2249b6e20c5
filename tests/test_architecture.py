"""The layering of the code base, read from the import statements (AST, every import including those inside
functions): imports point down the layers only, no two files import each other through any circle, each
backend keeps to its own folder, the command line goes through the API, and the lab and the benchmarks stay
out of the product and the tests.

    zsq_tvm/cli.py                    argument parsing; calls zsq_tvm.api only
    zsq_tvm/api.py                    the one facade
    workflows                         evaluate, tune, benchmark, demo (built on the pipeline)
    zsq_tvm/backends/<name>/          x86 | cuda | cortexm: kernels, offload patterns, TargetSpec, hooks
    compiler                          pipeline, build, targets (the registry backends plug into), frontends, zoo...
    relax_passes/                     target-independent Relax/TIR passes; import only the core
    zsq_tvm/core/                     integer algorithms, overflow proofs, errors; import nothing of ours
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("zsq_tvm", "relax_passes", "lab", "bench", "tools")
WORKFLOWS = {"zsq_tvm.evaluate", "zsq_tvm.tune", "zsq_tvm.tune_files", "zsq_tvm.benchmark", "zsq_tvm.demo", "zsq_tvm.transcribe"}
# rank of each layer: a module may import modules of its own rank or lower
RANK = {"core": 0, "passes": 1, "compiler": 2, "backends": 3, "workflows": 4, "api": 5, "cli": 6, "lab": 7, "bench": 8}


def layer(mod: str) -> str:
    if mod == "zsq_tvm" or mod.startswith("zsq_tvm.core"):  # the package itself only re-exports lazily
        return "core"
    if mod.split(".")[0] == "relax_passes":
        return "passes"
    if mod.startswith("zsq_tvm.backends"):
        return "backends"
    if mod in WORKFLOWS:
        return "workflows"
    if mod == "zsq_tvm.api":
        return "api"
    if mod == "zsq_tvm.cli":
        return "cli"
    if mod.split(".")[0] == "lab":
        return "lab"
    if mod.split(".")[0] in ("bench", "tools"):
        return "bench"
    return "compiler"


def modules(packages=PACKAGES) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for d, _, files in os.walk(ROOT / pkg):
            for f in files:
                if f.endswith(".py"):
                    p = Path(d) / f
                    m = ".".join(p.relative_to(ROOT).with_suffix("").parts)
                    out[m[: -len(".__init__")] if m.endswith(".__init__") else m] = p
    return out


def imports_of(mod: str, path: Path, known) -> set[str]:
    """Our modules ``mod`` imports (``from PKG import SUBMODULE`` counts as the submodule)."""
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            hits = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            out.update(hits or ([target] if target in known else []))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
    out.discard(mod)
    return out


def graph(packages=PACKAGES):
    mods = modules(packages)
    return {m: imports_of(m, p, mods) for m, p in mods.items()}


def test_imports_point_down_the_layers():
    bad = [f"{m} ({layer(m)}) imports {t} ({layer(t)})" for m, ts in graph().items() for t in sorted(ts)
           if RANK[layer(t)] > RANK[layer(m)]]
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(bad))


def test_relax_passes_import_only_the_core():
    bad = [f"{m} imports {t}" for m, ts in graph().items() if layer(m) == "passes" for t in ts
           if layer(t) not in ("core", "passes")]
    assert not bad, "\n".join(bad)


def test_each_backend_keeps_to_its_folder():
    def backend(m):
        parts = m.split(".")
        return parts[2] if len(parts) > 2 and parts[:2] == ["zsq_tvm", "backends"] else None

    bad = [f"{m} imports {t}" for m, ts in graph().items() for t in ts
           if backend(m) and backend(t) and backend(m) != backend(t)]
    assert not bad, "one backend imports another:\n" + "\n".join(bad)
    above = [f"{m} imports {t}" for m, ts in graph().items() for t in ts if backend(t) and layer(m) in ("compiler",)]
    assert not above, "the compiler layer finds backends through zsq_tvm.targets, never by import:\n" + "\n".join(above)


def test_command_line_goes_through_the_api():
    bad = [t for t in graph()["zsq_tvm.cli"] if t not in ("zsq_tvm.api", "zsq_tvm") and layer(t) != "core"]
    assert not bad, f"zsq_tvm.cli imports {bad}: add what it needs to zsq_tvm.api"


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one file (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in g:
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on.add(root)
        while work:
            v, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]; counter[0] += 1; stack.append(nxt); on.add(nxt)
                    work.append((nxt, iter(sorted(g.get(nxt, ())))))
                elif nxt in on:
                    low[v] = min(low[v], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_circles_between_files():
    cycles = _cycles(graph())
    assert not cycles, "files that import each other (directly or through others):\n" + "\n".join(map(str, cycles))


def test_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_layer_checker_sees_an_upward_import(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from zsq_tvm.api import quantize\n")
    assert imports_of("relax_passes.m", tmp_path / "m.py", {"zsq_tvm.api"}) == {"zsq_tvm.api"}
    assert RANK[layer("zsq_tvm.api")] > RANK[layer("relax_passes.m")]


def test_tests_do_not_import_the_benchmarks():
    known = modules(("bench", "tools"))
    bad = []
    for p in sorted((ROOT / "tests").glob("*.py")):
        hits = imports_of("tests." + p.stem, p, known)
        if hits:
            bad.append(f"{p.name}: {sorted(hits)}")
    assert not bad, "tests import benchmark code:\n" + "\n".join(bad)


def test_product_does_not_import_the_lab():
    bad = [f"{m} imports {t}" for m, ts in graph().items() if m.split(".")[0] in ("zsq_tvm", "relax_passes")
           for t in ts if t.split(".")[0] in ("lab", "bench", "tools")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("pkg", ["bench", "tools", "lab"])
def test_no_script_edits_sys_path(pkg):
    bad = []
    for p in sorted((ROOT / pkg).rglob("*.py")) if (ROOT / pkg).exists() else []:
        for node in ast.walk(ast.parse(p.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                    and node.value.id == "sys"):
                bad.append(str(p.relative_to(ROOT)))
                break
    assert not bad, f"scripts that edit sys.path (run them as `python -m {pkg}.NAME` instead): {bad}"
