"""The project's modules import each other without a cycle (counting the imports inside
functions too: a library module that imports its command line, or a module that imports its
own consumers, is a cycle even when the import is deferred), and the modules the chain reads
before the environment exists import nothing beyond the standard library."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kdcl_common", "pretrain", "transfer", "results", "chain")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` imports, anywhere in it (`if TYPE_CHECKING` aside)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:  # `from p import m`: the module m, else p itself
                    child = f"{base}.{alias.name}"
                    out.add(child if child in known else base)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                continue
            else:
                visit(ast.iter_child_nodes(node))

    visit(tree.body)
    return {m for m in out if m in known}


def graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
             if "configs" not in p.parts]
    names = {module_name(p): p for p in files}
    return {name: imports(path, name, set(names)) - {name}
            for name, path in names.items()}


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            # importing a package's submodule runs the package's __init__ first
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_chain_plans_with_the_standard_library_only():
    """`run_all.sh --dry-run` and --help work before the environment exists: the plan, the
    registries and the launch module import nothing beyond the standard library."""
    code = ("import sys; import chain.plan, chain.launch, chain.__main__, pretrain.registry, "
            "transfer.backends; third = sorted({m.split('.')[0] for m in sys.modules} - "
            "set(sys.stdlib_module_names) - {'__main__', 'chain', 'pretrain', 'transfer', "
            "'kdcl_common'}); "
            "print(third)")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


# Where a backend's name is a library's name, not the backend: the versions a record keeps
# (distribution names), torchvision's model constructors, and the report's torch + torchvision.
LIBRARY_NAMES = {("kdcl_common/provenance.py", "torchvision"),
                 ("kdcl_common/provenance.py", "mmdet"),
                 ("kdcl_common/provenance.py", "detectron2"), ("chain/acceptance/report.py",
                                                               "torchvision")}


def test_no_module_outside_a_backends_package_names_a_backend():
    """The registry (transfer/backends/__init__.py) is the one list of backends: plans, the
    acceptance check and the tables read its entries, so no code elsewhere holds a backend's
    name (docstrings and comments aside)."""
    from transfer.backends import REGISTRY

    names = {entry.name for entry in REGISTRY}
    found = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if "configs" in rel.parts or rel.parts[:2] == ("transfer", "backends"):
                continue
            tree = ast.parse(path.read_text())
            docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                          if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                          and node.body and isinstance(node.body[0], ast.Expr)}
            found += [f"{rel}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
                      if isinstance(node, ast.Constant) and node.value in names
                      and id(node) not in docstrings
                      and (str(rel), node.value) not in LIBRARY_NAMES]
    assert not found, found
