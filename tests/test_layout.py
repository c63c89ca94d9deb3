"""The package's shape: no import circles, and no module imports a later stage.

pflask is a pipeline (load -> compile -> run) with the commands and the
command line on top; a module that imports a later stage, or two modules that
import each other, hide that order from a reader and make each change reach
further than it should.  The imports are read from the source, inside
functions (pflask imports lazily for its start-up time, so most of its
imports are in functions).  Type-only imports (`if TYPE_CHECKING:`) count for
the order of stages but not as circles: they never run, and they are how a
handler names the type of the object that calls it.  Dynamic imports
(`__import__(f"pflask.{name}")` in the preloading of steps) are not seen.

STAGE places every module, whether the package is flat (pflask/loader.py) or
in one folder per stage (pflask/load/loader.py); once the folders exist,
each module must be in its stage's folder, and only TOP stays at the top.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pflask

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

PACKAGE = Path(pflask.__file__).parent

STAGES = (
    "shared",
    "kernel",
    "load",
    "compile",
    "run",
    "image",
    "pipeline",
    "api",
    "doc",
    "commands",
    "cli",
)
"""Earlier first: a module may import its own stage and earlier ones only."""

STAGE = {
    # shared: imported by every stage
    "pflask": "shared",
    "errors": "shared",
    "record": "shared",
    # kernel: the kernel's interfaces and names, no policy
    "libc": "kernel",
    "signals": "kernel",
    "capabilities": "kernel",
    "controllers": "kernel",
    # load: files, formats, positions, the schema and its rules, the original flags,
    # the typed Manifest
    "loader": "load",
    "positions": "load",
    "schema": "load",
    "semantics": "load",
    "classic": "load",
    "manifest": "load",
    "oci": "load",  # an OCI bundle's config.json -> Manifest
    "imageref": "load",  # image references: parsed where the manifest is checked
    # image: a manifest's image resolved, verified and unpacked before compiling (after
    # run: an ordinary user's layers are unpacked in a user namespace, with run.idmap)
    "image": "image",
    "source": "image",
    "unpack": "image",
    "store": "image",
    "prepare": "image",
    "registry": "image",
    "layout": "image",
    "userns": "image",
    # compile: Manifest -> Plan, and the plan cache
    "compiler": "compile",
    "plan": "compile",
    "context": "compile",
    "cache": "compile",
    "seccomp": "compile",
    "seccomp_default": "compile",
    # run: the supervisor, the container's processes and what their steps do
    "supervisor": "run",
    "container": "run",
    "steps": "run",
    "protocol": "run",
    "hygiene": "run",
    "mounts": "run",
    "loop": "run",
    "idmap": "run",
    "users": "run",
    "network": "run",
    "cgroups": "run",
    "devices": "run",
    "rlimits": "run",
    "terminal": "run",
    "boot": "run",
    "machined": "run",
    "state": "run",
    "attach": "run",  # its server is the detached supervisor's; `pflask attach` is its client
    "eventloop": "run",  # the one select loop of the supervisor, exec and attach
    "ocistate": "run",  # pflask-oci's records under --root
    "zygote": "run",  # forks the Python API's supervisors
    # the pipeline: load -> compile, once
    "pipeline": "pipeline",
    # api: the Python API (many containers from one process)
    "api": "api",
    # doc: the command line and the manifest described (argparse parsers, reference,
    # man pages, completion)
    "options": "doc",
    "reference": "doc",
    "manpage": "doc",
    "completion": "doc",
    # commands: what the subcommands do
    "commands": "commands",
    "nsenter": "commands",
    "stop": "commands",
    "runtime": "commands",  # pflask-oci: runc's command line
    "ociexec": "commands",  # pflask-oci exec
    "export": "commands",  # pflask export --oci: a manifest as a bundle
    "images": "commands",
    # the entry point
    "cli": "cli",
    "__main__": "cli",
}

TOP = {"pflask", "__main__", "cli", "pipeline", "api", "errors", "record"}
"""Modules that stay at the top of the package when it has one folder per stage."""


def modules(package: Path) -> dict[str, Path]:
    """Every module of the package, by dotted name (a folder's __init__ by the folder's)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = (package.name, *path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _nodes(node: ast.AST, typing: bool) -> Iterator[ast.AST]:
    """`node` and everything in it; without `if TYPE_CHECKING:` bodies unless `typing`."""
    yield node
    for child in ast.iter_child_nodes(node):
        if (
            not typing
            and isinstance(child, ast.If)
            and isinstance(child.test, ast.Name)
            and child.test.id == "TYPE_CHECKING"
        ):
            for other in child.orelse:
                yield from _nodes(other, typing)
            continue
        yield from _nodes(child, typing)


def imports(name: str, path: Path, known: set[str], typing: bool = True) -> set[str]:
    """The package's modules that `name` imports anywhere in its source (`typing`:
    type-only imports too)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8")), typing):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join([*parent, *([base] if base else [])])
            for alias in node.names:
                # `from pflask import loader` imports the module pflask.loader
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {module for module in found if module in known and module != name}


FACADE = {"pflask": {"pflask.api"}}
"""Imports that are not part of the order: the package's `__getattr__` hands
out the Python API (`pflask.load`, `pflask.Container`) on first use.  It runs
only when a program asks the package for one of those names, never while
pflask's own modules import each other (they import `pflask` for its
`__version__` and its folder), so it makes no circle and no stage depends
on it."""


def graph(package: Path, typing: bool = True) -> dict[str, set[str]]:
    found = modules(package)
    return {
        name: imports(name, path, set(found), typing) - FACADE.get(name, set())
        for name, path in found.items()
    }


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    result: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return result


def stage_of(name: str) -> str:
    """A module's stage: the table's, by the module's own name."""
    short = name.rsplit(".", 1)[-1]
    if name.count(".") == 1 and short in STAGES:
        return short  # a stage folder's __init__
    assert short in STAGE, f"{name}: which stage? Add it to STAGE in {__file__}"
    return STAGE[short]


def later_imports(edges: dict[str, set[str]]) -> list[str]:
    """'a imports b (a later stage)' for each import against the order."""
    rank = {stage: number for number, stage in enumerate(STAGES)}
    return [
        f"{name} ({stage_of(name)}) imports {other} ({stage_of(other)})"
        for name, targets in sorted(edges.items())
        for other in sorted(targets)
        if rank[stage_of(other)] > rank[stage_of(name)]
    ]


def test_no_import_circles() -> None:
    assert circles(graph(PACKAGE, typing=False)) == []


def test_every_module_has_a_stage_and_imports_no_later_stage() -> None:
    assert later_imports(graph(PACKAGE)) == []


def test_with_stage_folders_each_module_is_in_its_stages_folder() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders <= set(STAGES), f"folders that are not stages: {folders - set(STAGES)}"
    if not folders:
        return  # the flat layout: the table alone places the modules
    misplaced = []
    for name in modules(PACKAGE):
        parts = name.split(".")
        if len(parts) == 2 and parts[1] in folders:
            continue  # a stage folder itself
        where = parts[1] if len(parts) == 3 else None
        short = parts[-1]
        wanted = None if short in TOP else stage_of(name)
        if where != wanted:
            misplaced.append(f"{name}: belongs in {wanted or 'the top'}")
    assert misplaced == []


# --- the checks themselves find what they look for -------------------------------------------


def test_circles_and_later_imports_are_found(tmp_path: Path) -> None:
    package = tmp_path / "pflask"
    (package / "load").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "load" / "__init__.py").write_text("")
    (package / "load" / "loader.py").write_text(
        "def f():\n    from pflask.load import semantics\n    from pflask import cli\n"
    )
    (package / "load" / "semantics.py").write_text("from . import loader\n")
    (package / "load" / "schema.py").write_text(
        "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from pflask.load import positions\n"
    )
    (package / "load" / "positions.py").write_text("from pflask.load import schema\n")
    (package / "cli.py").write_text("import pflask.load.loader\n")
    edges = graph(package)
    assert edges["pflask.load.loader"] == {"pflask.load.semantics", "pflask.cli"}
    assert edges["pflask.load.semantics"] == {"pflask.load.loader"}
    assert edges["pflask.cli"] == {"pflask.load.loader"}
    assert edges["pflask.load.schema"] == {"pflask.load.positions"}
    runtime = ["pflask.cli", "pflask.load.loader", "pflask.load.semantics"]
    assert sorted(circles(edges)) == [runtime, ["pflask.load.positions", "pflask.load.schema"]]
    assert circles(graph(package, typing=False)) == [runtime]  # a type-only circle is none
    assert later_imports(edges) == ["pflask.load.loader (load) imports pflask.cli (cli)"]


def test_the_cache_key_watches_modules_that_exist() -> None:
    """cache._COMPILER names modules by path below the package: a moved module
    it no longer finds would silently stop invalidating cached plans."""
    found = {name.removeprefix("pflask.") for name in modules(PACKAGE)}
    (where,) = [name for name in found if name.rsplit(".", 1)[-1] == "cache"]
    cache = importlib.import_module(f"pflask.{where}")  # either layout
    assert [name for name in cache._COMPILER if name not in found] == []
