"""The layering rules of the package, checked from its source.

Every ``import`` statement counts: module level, inside functions, and under
``if TYPE_CHECKING``.  The rules (see docs/architecture.md):

* the folder a module sits in says what it may import: a layer imports only
  from the layers below it and from its own folder;
* ``syncws.protocol`` and ``syncws.base`` do no I/O: no gevent (except the
  real lock's ``gevent.monkey``), no sockets, no werkzeug;
* there is no import cycle between the package's modules.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "syncws"

#: Bottom to top.  The top-level modules (the facade and the stable aliases) may import anything.
LAYERS = ["base", "protocol", "client", "pubsub", "server", "web", "channels", "integrations", "cli"]
FACADE = len(LAYERS)

#: Third-party and standard modules a layer must not import (prefixes).
FORBIDDEN = {
    "base": ("gevent.socket", "gevent.pywsgi", "gevent.event", "socket", "werkzeug", "redis", "select"),
    "protocol": ("gevent", "geventwebsocket", "socket", "select", "threading", "time", "werkzeug", "redis"),
    "pubsub": ("werkzeug", "gevent.pywsgi", "geventwebsocket"),
    # The client runs in plain threads (a script, a Celery task): no gevent, no server stack.
    "client": ("gevent", "geventwebsocket", "werkzeug", "redis"),
}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: pathlib.Path) -> set[str]:
    """Every module this one imports (absolute names), at any depth of the source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:  # ``from . import x`` may name a submodule
                found.add(f"{target}.{alias.name}")
    return found


def internal_graph() -> dict[str, set[str]]:
    known = modules()
    graph = {}
    for name, path in known.items():
        graph[name] = {target for target in imports_of(name, path) if target in known and target != name}
    return graph


def layer_of(name: str) -> int:
    parts = name.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return FACADE


def test_the_tree_has_one_folder_per_layer():
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(LAYERS)
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    # The facade and the stable aliases of the first round's module names only.
    assert top == ["__init__", "__main__", "compat", "gunicorn", "redis_broker", "testing"]


@pytest.mark.parametrize("name", sorted(modules()))
def test_a_module_imports_only_from_its_layer_and_below(name):
    graph = internal_graph()
    mine = layer_of(name)
    above = sorted(target for target in graph[name] if layer_of(target) > mine)
    assert not above, f"{name} (layer {mine}) imports from higher layers: {above}"


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_the_lower_layers_do_no_io(layer):
    offenders = []
    for name, path in modules().items():
        if layer_of(name) != LAYERS.index(layer):
            continue
        for target in imports_of(name, path):
            if target.startswith(FORBIDDEN[layer]) and not target.startswith("syncws"):
                if any(target == f or target.startswith(f + ".") for f in FORBIDDEN[layer]):
                    offenders.append((name, target))
    assert not offenders


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle, or [] (depth-first search with colours)."""
    colour = dict.fromkeys(graph, 0)  # 0 unseen, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if colour[nxt] == 0:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        colour[node] = 2
        return []

    for node in sorted(graph):
        if colour[node] == 0:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_there_is_no_import_cycle():
    assert find_cycle(internal_graph()) == []


def test_the_cycle_finder_finds_cycles():
    # The check above must be able to fail.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_the_diagram_in_the_docs_names_every_module_in_its_layer():
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    diagram = text.split("```\n", 2)[1]
    rows: dict[str, str] = {}
    current = ""
    for line in diagram.splitlines():
        label = line[:17].strip()
        if label.endswith("/") or label == "top":
            current = label.rstrip("/")
        rows[current] = rows.get(current, "") + " " + line[17:]
    missing = []
    for name in modules():
        parts = name.split(".")
        if len(parts) < 3 or parts[-1] == "__init__":
            continue  # the facade and the packages' own __init__ modules
        if parts[-1] not in rows.get(parts[1], "").replace(",", " ").split():
            missing.append(name)
    assert not missing, f"modules the diagram of docs/architecture.md does not name in their layer: {missing}"
