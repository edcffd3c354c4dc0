"""The layout reads as the method: every module on its floor, no import circles, no upward
imports, no private names across modules, small modules and functions, and CLI defaults that
are the config dataclasses' own."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "seed"
# Lower floors never import higher ones; a module may import its own floor.
FLOORS = {
    "seed.errors": 0, "seed.prompts": 0, "seed.config": 0, "seed.io": 0, "seed.coco": 0, "seed.vocabulary": 0, "seed.lexicon": 0,
    "seed.tracking": 0,
    "seed.adapters": 1,
    "seed.purge": 2, "seed.isolate": 2, "seed.targets": 2, "seed.losses": 2,
    "seed.identify": 3, "seed.detector": 3,
    "seed.purify": 4, "seed.distill": 4, "seed.detection": 4,
    "seed.decoding": 5,
    "seed.evaluation": 6,
    "seed.report": 7, "seed.html_report": 7, "seed.world": 7,
    "seed.evolve": 8, "seed.datasets": 8,
    "seed.options": 9, "seed.cli": 9, "seed": 9, "seed.__main__": 9,
}  # fmt: skip
RECIPES = {"evolve", "_build_world_into"}  # may read top to bottom at any length


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor(module: str) -> int:
    while module not in FLOORS:
        module = module.rsplit(".", 1)[0]
    return FLOORS[module]


def imports(module: str) -> set[str]:
    """The seed modules ``module`` imports, at any depth of its code."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out.update(n for n in names if n in MODULES and n != module)
    return out


GRAPH = {m: imports(m) for m in MODULES}


def test_no_import_circles():
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                pytest.fail("import circle: " + " → ".join(path[path.index(n) :] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [m])


def test_no_upward_imports():
    upward = [f"{m} (floor {floor(m)}) → {n} (floor {floor(n)})" for m, ns in GRAPH.items() for n in ns if floor(n) > floor(m)]
    assert not upward, upward
    assert not [m for m, ns in GRAPH.items() if any(n.startswith("seed.world") for n in ns) and floor(m) < floor("seed.world")]


def test_no_private_names_across_modules():
    offending = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("seed"):
                offending += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
        offending += [f"{path.name}: {m}" for m in re.findall(r"\b[A-Z]\._[a-z]\w*", path.read_text())]
    assert not offending, offending


def test_modules_and_functions_are_small():
    long_modules = [f"{m}: {len(p.read_text().splitlines())}" for m, p in MODULES.items() if len(p.read_text().splitlines()) > 400]
    assert not long_modules, long_modules
    long_functions = []
    for m, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in RECIPES:
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long_functions.append(f"{m}.{node.name}: {length}")
    assert not long_functions, long_functions


def test_every_cli_default_is_its_dataclass_default():
    """Derived options cannot drift; this checks the derivation itself, command by command."""
    import typer

    from seed.cli import app
    from seed.options import cli_default

    def commands(group):
        for command in group.commands.values():
            yield from commands(command) if hasattr(command, "commands") else [command]

    checked = 0
    for command in commands(typer.main.get_command(app)):
        context = command.make_context(command.name, [])  # every default parses as its option's type
        for name, (cls, path) in getattr(command.callback, "derived_options", {}).items():
            value = context.params[name]
            assert value == cli_default(*_field(cls, path)[1:]) or value == _field(cls, path)[2], (command.name, path, value)
        derived = getattr(command.callback, "derived_options", {})
        for param in command.params:
            if param.name not in derived:
                continue
            cls, path = derived[param.name]
            field, kind, default = _field(cls, path)
            assert param.default == cli_default(kind, default) or (param.default in (None, ()) and default is None), (command.name, path)
            assert param.help == field.metadata["help"], (command.name, path)
            checked += 1
    assert checked > 150


def _field(cls, path: str):
    import typing

    *outer, leaf = path.split(".")
    for name in outer:
        cls = typing.get_type_hints(cls)[name]
    f = next(f for f in dataclasses.fields(cls) if f.name == leaf)
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return f, typing.get_type_hints(cls)[leaf], default


def test_every_config_field_has_help():
    import seed.config

    configs = [v for v in vars(seed.config).values() if dataclasses.is_dataclass(v)]
    assert len(configs) >= 9
    for cls in configs:
        for f in dataclasses.fields(cls):
            assert dataclasses.is_dataclass(f.default_factory) if f.default_factory is not dataclasses.MISSING and not f.metadata else f.metadata.get("help"), (cls.__name__, f.name)
