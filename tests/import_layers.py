"""The layers of llm_gym's packages, and a check that every import in src/ follows them.

Run as a script to print the package graph (``python tests/import_layers.py [--graph] [SRC_DIR]``);
``tests/architecture/test_import_layers.py`` runs the check in ``make test``.

An import may only point down the table ``LAYERS``. Packages of one layer are independent of each other
unless ``SIDEWAYS`` names the arrow. Imports inside functions are refused outside ``llm_gym.cli`` (whose
commands import the library lazily, so that ``llm_gym --help`` does not import torch), except for the few
third-party modules in ``DEFERRED``: an import inside a function hides a dependency, and a cycle with it.
"""

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT_PACKAGE = "llm_gym"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("cli",),
    ("training", "inference"),
    ("assembly",),
    ("checkpointing", "evaluation"),
    ("data", "models", "parallel", "logging_broker", "optim", "config"),
    ("registry",),
    ("outputs", "seeds"),
    ("errors", "__init__"),
)
"""Top to bottom: ``training`` runs what ``assembly`` lists; the leaves (data, models, parallel, logging_broker,
optim) and ``config`` (loading, the run's schema) know only the registry mechanism below them. ``evaluation``
(scoring on corpora and tasks, and the in-loop evaluators) reads data and parallel and is listed by ``assembly``;
``inference.evaluation`` runs it on a checkpoint."""

SIDEWAYS = {("parallel", "models")}
"""Arrows inside one layer: parallelism strategies read the model contract (``llm_gym.models.contract``)."""

DEFERRED = {
    "wandb": "an optional extra (llm_gym[wandb]); imported by the logger that needs it",
    "transformers": "an optional extra (llm_gym[hf]); imported by the export that needs it",
    "torch.utils.tensorboard": "slow to import; only runs with a TensorBoard logger pay for it",
    "pyarrow": "an optional extra (llm_gym[data]); imported by the parquet and Arrow readers",
    "zstandard": "an optional extra (llm_gym[data]); imported by the .zst reader",
}
"""Third-party modules that may be imported inside a function outside the CLI, and why."""

LAZY_IMPORTS_ALLOWED = "cli"


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    importer: str
    """The importing module, dotted."""
    imported: str
    """The imported module, dotted (for ``from a import b``: ``a``, or ``a.b`` when that is a module)."""
    in_function: bool


def package_of(module: str) -> str | None:
    """``llm_gym.models.decoder`` → ``models``; None outside llm_gym."""
    parts = module.split(".")
    if parts[0] != ROOT_PACKAGE:
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(source_root: Path, path: Path) -> str:
    parts = list(path.relative_to(source_root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _is_package(source_root: Path, module: str) -> bool:
    return (source_root / Path(*module.split(".")) / "__init__.py").is_file()


def _is_module(source_root: Path, module: str) -> bool:
    path = source_root / Path(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


class _ImportVisitor(ast.NodeVisitor):
    def __init__(self, source_root: Path, path: Path):
        self.source_root, self.path = source_root, path
        self.module = _module_name(source_root, path)
        self.package = self.module if path.name == "__init__.py" else self.module.rpartition(".")[0]
        self.function_depth = 0
        self.imports: list[Import] = []

    def _function(self, node: ast.AST) -> None:
        self.function_depth += 1
        self.generic_visit(node)
        self.function_depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _add(self, node: ast.AST, imported: str) -> None:
        self.imports.append(Import(self.path, node.lineno, self.module, imported, self.function_depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - node.level + 1]
            source = ".".join([*base, node.module] if node.module else base)
        else:
            source = node.module or ""
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            is_submodule = package_of(source) is not None and _is_module(self.source_root, submodule)
            self._add(node, submodule if is_submodule else source)


def imports_in(source_root: Path) -> Iterator[Import]:
    """Every import statement of the package under ``source_root`` (the directory holding ``llm_gym/``)."""
    for path in sorted((source_root / ROOT_PACKAGE).rglob("*.py")):
        visitor = _ImportVisitor(source_root, path)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        yield from visitor.imports


def _layer_of(package: str) -> int:
    for index, layer in enumerate(LAYERS):
        if package in layer:
            return index
    raise KeyError(package)


def violations(source_root: Path) -> list[str]:
    """One line per import that breaks the layers, ``path:line: what``; empty when every import follows them."""
    problems = []
    for found in imports_in(source_root):
        where = f"{found.path.relative_to(source_root)}:{found.line}"
        importer, imported = package_of(found.importer), package_of(found.imported)
        if found.in_function and importer != LAZY_IMPORTS_ALLOWED and not _deferred(found.imported):
            problems.append(
                f"{where}: {found.importer} imports {found.imported} inside a function; import it at the top "
                f"(only {ROOT_PACKAGE}.{LAZY_IMPORTS_ALLOWED} imports lazily)"
            )
        if imported is None or importer == imported:
            continue
        try:
            importer_layer, imported_layer = _layer_of(importer), _layer_of(imported)
        except KeyError as error:
            problems.append(f"{where}: package {ROOT_PACKAGE}.{error.args[0]} has no place in LAYERS")
            continue
        if imported_layer < importer_layer:
            problems.append(f"{where}: {found.importer} imports {found.imported}, a layer above {importer}")
        elif imported_layer == importer_layer and (importer, imported) not in SIDEWAYS:
            problems.append(
                f"{where}: {found.importer} imports {found.imported}; {importer} and {imported} are independent"
            )
    return list(dict.fromkeys(problems))  # `from a import b, c` is one statement, one problem


def _deferred(module: str) -> bool:
    return any(module == name or module.startswith(f"{name}.") for name in DEFERRED)


def package_graph(source_root: Path) -> dict[str, set[str]]:
    """Package → the llm_gym packages it imports (module-level and inside functions alike)."""
    graph: dict[str, set[str]] = {}
    for found in imports_in(source_root):
        importer, imported = package_of(found.importer), package_of(found.imported)
        graph.setdefault(importer, set())
        if imported is not None and imported != importer:
            graph[importer].add(imported)
    return graph


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_root", nargs="?", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument("--graph", action="store_true", help="print package → imported packages")
    arguments = parser.parse_args()
    if arguments.graph:
        for package, imported in sorted(package_graph(arguments.source_root).items()):
            print(f"{package} → {', '.join(sorted(imported)) or '(nothing)'}")
    problems = violations(arguments.source_root)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
