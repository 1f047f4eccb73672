"""The package's import graph, read from the source with ast (every import, function-local ones too): no cycle
anywhere, the layers below the models import only each other, and the stitch space and FLOPs need no torch."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# below the models: errors and files, the pure stitch-space functions, anchors, config, data, results
LOWER = {"snnet.errors", "snnet.registry", "snnet._atomic", "snnet.files", "snnet.progress", "snnet.flops", "snnet.stitch_space", "snnet.sampling",
         "snnet.selection", "snnet.route_tree", "snnet.rel_pos", "snnet.stitching_layers", "snnet.anchors",
         "snnet.config", "snnet.data", "snnet.data.scenes", "snnet.data.coco", "snnet.results",
         "snnet.distributed", "snnet.latency", "snnet.runtime", "snnet.quantize"}
PURE = {"snnet.registry", "snnet.stitch_space", "snnet.flops", "snnet.sampling", "snnet.selection"}


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules and the top-level packages it imports."""
    files = {}
    for f in (SRC / "snnet").rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {}
    for name, f in files.items():
        package = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name if a.name in files else a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module
                subs = {f"{base}.{a.name}" for a in node.names} & files.keys()
                found |= subs or {base if base in files else base.split(".")[0]}
        graph[name] = found - {name}
    return graph


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


def test_the_lower_layers_import_only_each_other():
    graph = import_graph()
    assert LOWER <= graph.keys()
    for name in LOWER:
        upward = {m for m in graph[name] if m.startswith("snnet") and m not in LOWER}
        assert not upward, f"{name} imports {sorted(upward)}"


def test_a_cycle_is_found():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}, {"a", "b", "c", "d"}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}, {"a", "b"}) is None


def test_the_stitch_space_and_flops_are_pure_python():
    graph = import_graph()
    for name in PURE:
        assert not graph[name] & {"torch", "timm", "numpy"}, (name, graph[name])

