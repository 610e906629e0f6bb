"""The package's imports run one way: no cycle between seq2seq's modules (counting the imports inside
functions, which hide cycles from Python but not from a reader), and every import inside a function is an
optional extra or a start-up cost, with its reason on the line."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "seq2seq"
# imports that may stay inside a function without a reason: the optional extras (seq2seq[export], seq2seq[serve])
OPTIONAL = ("transformers", "ctranslate2", "fastapi", "starlette", "uvicorn", "httpx")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[ast.AST, str, bool]]:
    """(node, imported module, inside a function) of every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_main_block(child):  # `python -m seq2seq.decode` handing over to seq2seq.cli.decode: not an import
                continue                # of the module, which runs it as another module (__main__)
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((child, alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else []))
                found.append((child, base, in_function))
                found.extend((child, f"{base}.{alias.name}", in_function) for alias in child.names)
            visit(child, inside)

    visit(tree, False)
    return found


def _is_main_block(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__")


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for _, target, _ in imports(path):
            if target in files and target != name:
                edges[name].add(target)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_package():
    edges = graph()
    assert len(edges) > 40 and edges["seq2seq.decode"]  # the graph was read
    assert find_cycle(edges) is None, f"import cycle: {' -> '.join(find_cycle(edges))}"


def test_imports_inside_functions_are_optional_extras_or_give_their_reason():
    offenders, lazy = [], 0
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node, target, in_function in imports(path):
            if not in_function or target.split(".")[0] in OPTIONAL:
                continue
            if "# lazy:" in lines[node.lineno - 1]:
                lazy += 1
            else:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {target}")
    assert not offenders, "imports inside functions without '# lazy: <reason>':\n" + "\n".join(sorted(set(offenders)))
    assert lazy >= 6  # the commands' entry points import their work lazily (seq2seq.cli)
