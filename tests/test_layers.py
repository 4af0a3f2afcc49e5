"""The rooms import only downward, and no module imports itself back through others.

The order is the one docs/architecture.md draws: the leaves (`errors`, `fileio`, `config`,
`documents`) at the bottom, then `model`, `tokenizer`, `data`, `train`, `infer`, `eval`,
`rag`, `scaling`, `quickstart` and `cli` on top. Imports inside functions count too: a lazy import
hides a cycle from Python, not from a reader.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "chuan"
LAYERS = [
    {"errors", "fileio", "config", "documents"},
    {"model"},
    {"tokenizer"},
    {"data"},
    {"train"},
    {"infer"},
    {"align"},
    {"eval"},
    {"rag"},
    {"scaling"},
    {"quickstart"},
    {"cli"},
]
RANK = {room: rank for rank, rooms in enumerate(LAYERS) for room in rooms}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every chuan module and the chuan modules it imports (anywhere in its body)."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        targets = found.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                if base.startswith("chuan"):
                    targets.add(base)
                    targets.update(f"{base}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("chuan"))
    modules = set(found)
    return {m: {t for t in ts if t in modules and t != m} for m, ts in found.items()}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the root package, above every room


IMPORTS = _imports()


def test_the_layer_list_names_every_room():
    assert {_room(m) for m in IMPORTS} - {None} == set(RANK)


@pytest.mark.parametrize("module", sorted(m for m in IMPORTS if _room(m)))
def test_rooms_import_only_downward(module):
    room = _room(module)
    upward = sorted(
        target
        for target in IMPORTS[module]
        if _room(target) not in (None, room) and RANK[_room(target)] > RANK[room]
    )
    assert not upward, f"{module} ({room}) imports higher rooms: {upward}"


def test_no_module_imports_itself_back():
    """No cycle among modules, the root package aside (it re-exports its rooms)."""
    graph = {m: {t for t in ts if _room(t)} for m, ts in IMPORTS.items() if _room(m)}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_corpus_worker_imports_no_torch():
    """`import chuan.data.rules` (what a corpus worker process needs) loads neither torch nor
    transformers: the registration with transformers waits until an Auto class is used."""
    loaded = _run(
        "import sys, chuan.data.rules, chuan.data.langid, chuan.documents\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    assert loaded.strip() == "[]"


@pytest.mark.parametrize("first", ["chuan", "transformers"])
def test_import_chuan_registers_the_auto_classes_whichever_comes_first(first, tiny_dir, tmp_path):
    from chuan.tokenizer.hf import write_tokenizer_dir
    from chuan.tokenizer.spm import load_proto

    tok = write_tokenizer_dir(
        tmp_path / "tok",
        load_proto(Path(__file__).parent / "data/tokenizers/llama/tokenizer.model"),
    )
    imports = [
        "import chuan",
        "from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer",
    ]
    if first == "transformers":
        imports.reverse()
    shown = _run(
        "\n".join(imports) + "\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(tiny_dir)!r})\n"
        f"config = AutoConfig.from_pretrained({str(tiny_dir)!r})\n"
        f"tokenizer = AutoTokenizer.from_pretrained({str(tok)!r})\n"
        "print(type(model).__name__, type(config).__name__, type(tokenizer).__name__, "
        "callable(model.chat))"
    )
    assert shown.split() == [
        "BaichuanForCausalLM", "BaichuanConfig", "BaichuanTokenizerFast", "True"
    ]  # fmt: skip
