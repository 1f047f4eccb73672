"""The package's import graph, read from the source with ast, against the table of layers in docs/layers.md: every
module in one row, importing only its own row and the rows below; no cycle; no torch in the pure core; no
function-local import but of an optional extra."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# the extras a user may not have installed: imported where they are used, so that the rest works without them
OPTIONAL = {"onnx", "onnxscript", "onnxruntime", "gradio", "fastapi", "uvicorn", "prometheus_client", "httpx", "ray",
            "starlette", "pandas", "tensorboard"}


def module_files() -> dict[str, Path]:
    files = {}
    for f in (SRC / "snnet").rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return files


def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:`` (imports for annotations, never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules and the top-level packages it imports."""
    files = module_files()
    graph = {}
    for name, f in files.items():
        package = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in _runtime_nodes(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name if a.name in files else a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module
                subs = {f"{base}.{a.name}" for a in node.names} & files.keys()
                found |= subs or {base if base in files else base.split(".")[0]}
        graph[name] = found - {name}
    return graph


def layers() -> list[list[str]]:
    """The rows of docs/layers.md's table, bottom first: each a list of entries (``name``, ``name/``)."""
    rows = []
    for line in (ROOT / "docs" / "layers.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and cells[1].startswith("`"):
            rows.append(re.findall(r"`([^`]+)`", cells[1]))
    return rows


def layer_of(rows: list[list[str]], modules) -> dict[str, int]:
    """module -> its row; a module in no row, or in two, is an error naming it."""
    found = {}
    for name in modules:
        path = name.removeprefix("snnet").lstrip(".").replace(".", "/") or "__init__"
        hits = [i for i, row in enumerate(rows) for entry in row
                if path == entry or (entry.endswith("/") and f"{path}/".startswith(entry))]
        if len(hits) != 1:
            raise LookupError(f"{name} is in {len(hits)} rows of docs/layers.md, not one")
        found[name] = hits[0]
    return found


def cycle(graph: dict[str, set[str]], nodes: set[str]) -> list[str] | None:
    """An import cycle among ``nodes`` (its modules in order, the first repeated at the end), or None."""
    done, path = set(), []

    def visit(name):  # depth first: a module met again on the current path closes a cycle
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return None
        path.append(name)
        for m in sorted(graph[name] & nodes):
            found = visit(m)
            if found:
                return found
        path.pop()
        done.add(name)
        return None

    return next((c for c in map(visit, sorted(nodes)) if c), None)


def test_the_package_imports_form_no_cycle():
    graph = import_graph()
    assert cycle(graph, set(graph)) is None, " -> ".join(cycle(graph, set(graph)))


def test_every_module_imports_only_its_layer_and_those_below():
    graph = import_graph()
    rows = layers()
    assert len(rows) >= 10 and rows[0][0] == "__init__"
    where = layer_of(rows, graph)
    for name, imported in graph.items():
        upward = sorted(m for m in imported if m in where and where[m] > where[name])
        assert not upward, f"{name} (layer {where[name]}) imports {upward} from the layers above"
    # every entry of the table is a module or package that exists
    for row in rows:
        for entry in row:
            assert (SRC / "snnet" / f"{entry}.py").is_file() or (SRC / "snnet" / entry).is_dir(), entry


def test_a_module_in_no_row_or_two_is_found():
    rows = [["__init__", "errors"], ["tasks/"], ["tasks/base"]]
    assert layer_of(rows, ["snnet", "snnet.tasks.dense"]) == {"snnet": 0, "snnet.tasks.dense": 1}
    for name, count in (("snnet.cli", 0), ("snnet.tasks.base", 2)):
        with pytest.raises(LookupError, match=f"^{name} is in {count} rows of docs/layers.md, not one$"):
            layer_of(rows, [name])


def test_a_cycle_is_found():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}, {"a", "b", "c", "d"}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}, {"a", "b"}) is None


def test_the_pure_core_needs_no_torch():
    graph = import_graph()
    for name in (f"snnet.{m}" if m != "__init__" else "snnet" for m in layers()[0]):
        assert not graph[name] & {"torch", "timm", "numpy"}, (name, graph[name])


def test_imports_are_at_module_level_but_optional_extras():
    local = []
    for name, f in module_files().items():
        for fn in ast.walk(ast.parse(f.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import):
                        tops = {a.name.split(".")[0] for a in node.names}
                    elif isinstance(node, ast.ImportFrom):
                        tops = {"snnet" if node.level else node.module.split(".")[0]}
                        tops = {"tensorboard"} if (node.module or "").startswith("torch.utils.tensorboard") else tops
                    else:
                        continue
                    if tops - OPTIONAL:
                        local.append(f"{name}:{node.lineno} {sorted(tops - OPTIONAL)}")
    assert not local, local


def test_the_readme_layout_names_every_module_of_the_table():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("- Layout, bottom layer first"):]
    layout = re.split(r"\n(?!  )", layout, maxsplit=1)[0]  # the bullet: up to the first line not indented
    missing = [e for row in layers() for e in row
               if e != "__init__" and f"`{e if e.endswith('/') else e + '.py'}`" not in layout]
    assert not missing, missing
