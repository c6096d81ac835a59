"""The design rules, as cheap tests: static analysis of the source with ``ast``, and commands
run where torch and TensorFlow cannot be imported (tests/blocked_imports.py).

1. ``porting/`` code (not its docstrings; comments are not in the syntax tree) names no
   architecture, layer or input size: they are the folders' data (``models/<name>/spec.py``).
2. ``import porting.pipeline`` and a whole port need neither torch nor TensorFlow; a command
   that needs an extra which is not installed says which, in one line.
3. No import cycle among the modules of ``porting/`` and ``models/``.
4. ``models/`` imports nothing of ``porting/`` but its one shared leaf, ``porting.errors``.
5. Imports run one way between porting's wings (``WINGS``, lowest first).

Each checker is a plain function, and each has a negative control: fed a small synthetic source
or graph that breaks its rule, it must say so. The import graph is every ``import`` and ``from
... import`` in a module, at any depth (function-level imports included), and
``import_module("literal")``; imports under ``if TYPE_CHECKING:`` are left out (they never
run), as are imports by a computed name (``models``' lazy facade, the spec discovery).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from blocked_imports import CLI, TENSORFLOW, run_blocked
from models.spec import architectures

ROOT = Path(__file__).resolve().parents[1]
NO_TF_NO_TORCH = (*TENSORFLOW, "torch")


def _python_files(package: str) -> dict[str, Path]:
    """module name -> file, for every module of ``package`` (a folder of ROOT)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


# --- 1. porting/ names no architecture, layer or input size -------------------------------------

def _squeezed(text: str) -> str:
    """Lower case, letters and digits only: "ResNet-50 v1", "resnet_v1_50" -> comparable."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


@dataclass(frozen=True)
class Vocabulary:
    """What porting/ code must not spell, derived from every architecture's spec."""
    architectures: dict[str, str]  # squeezed spelling -> the architecture it names
    layers: frozenset[str]         # TF-Slim scope components and end-point names
    sizes: frozenset[int]          # eval input sizes


def vocabulary() -> Vocabulary:
    """Every spelling a spec gives its architecture (name, title, TF-Slim root scope, Keras
    application, timm model); every component of every table layer's TF-Slim scope and of
    every end point below the root; every eval input size.

    Left out, on purpose: the names of the class-score end points every architecture shares
    (``Architecture.logits_end_points``: "Logits", "AuxLogits", in any case): they are the
    spec's interface, what verify, export and the CLI work with, not one architecture's layer.
    A folder's or a family's name ("resnet", "vgg") is no architecture's: TF-Slim's
    preprocessing methods are named after families ("inception", "vgg"), and porting may name
    those. The resize side of VGG-style preprocessing (256) is no input size, and is also the
    byte range (porting/write/pth.py's pickle opcodes)."""
    specs = list(architectures().values())
    shared = {name.lower() for spec in specs for name in spec.logits_end_points}
    names = {}
    for spec in specs:
        spellings = [spec.name, spec.title, spec.tf_root, spec.timm_keys or spec.name,
                     *spec.aliases]
        if spec.keras:
            spellings.append(spec.keras.application.rsplit(".", 1)[-1])
        for spelling in spellings:
            names.setdefault(_squeezed(spelling), spec.name)
    layers = {part for spec in specs
              for scope in (*(layer.scope for layer in spec.layers), *spec.end_points)
              for part in scope.split("/") if part != spec.tf_root}
    return Vocabulary(names, frozenset(p for p in layers if p.lower() not in shared),
                      frozenset(spec.eval.input_size for spec in specs))


def _documentation(tree: ast.AST) -> set[int]:
    """ids of the string constants that are statements of their own: docstrings (and strings
    used as comments)."""
    return {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)}


def _identifiers(node: ast.AST):
    """The names a node introduces or uses: variables, attributes, functions, classes,
    arguments, keywords, imported modules and their aliases."""
    if isinstance(node, ast.Name):
        yield node.id
    elif isinstance(node, ast.Attribute):
        yield node.attr
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield node.name
    elif isinstance(node, ast.arg):
        yield node.arg
    elif isinstance(node, ast.keyword) and node.arg:
        yield node.arg
    elif isinstance(node, ast.alias):
        yield from filter(None, (node.name, node.asname))
    elif isinstance(node, ast.ImportFrom) and node.module:
        yield node.module


NUMBER = re.compile(r"(?<![0-9])[0-9]+(?![0-9])")
WORD = re.compile(r"[A-Za-z0-9_]+")


def named_specifics(source: str, words: Vocabulary) -> list[tuple[int, str, str]]:
    """[(line, what, word)] for each place the code of ``source`` names an architecture
    (``what`` = "architecture"), a layer ("layer") or an input size ("input size")."""
    tree = ast.parse(source)
    documentation = _documentation(tree)
    found = []

    def architecture_in(text: str, line: int):
        squeezed = _squeezed(text)
        found.extend((line, "architecture", name)
                     for spelling, name in words.architectures.items() if spelling in squeezed)

    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Constant) and id(node) not in documentation:
            value = node.value
            if isinstance(value, str):
                architecture_in(value, line)
                found.extend((line, "layer", w) for w in WORD.findall(value) if w in words.layers)
                found.extend((line, "input size", n) for n in NUMBER.findall(value)
                             if int(n) in words.sizes)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and value in words.sizes:
                found.append((line, "input size", repr(value)))
        for name in _identifiers(node):
            architecture_in(name, line)
            if name in words.layers:
                found.append((line, "layer", name))
    return sorted(set(found))


# (file under porting/, the word it may name) -> why. Each entry allows that word once in that
# file, and must still be needed: an entry nothing matches fails too, so the list only shrinks.
ALLOWED = {
    ("porting/verify/goldens.py", "inception_v3"):
        "golden files recorded before they carried an 'architecture' attribute are Inception "
        "v3's (the only architecture then); reading them needs that name",
    ("porting/demo.py", "inception_v3"):
        "`make demo`'s documented default subject is the adv_inception_v3 release (README); "
        "`python -m porting.demo RELEASE` takes any other; the code path is generic",
}


def porting_offenders(words: Vocabulary) -> tuple[list[str], list[str]]:
    """(offences "file:line: names what 'word'", allow-list entries nothing matched)."""
    offences, used = [], set()
    for path in _python_files("porting").values():
        relative = path.relative_to(ROOT).as_posix()
        for line, what, word in named_specifics(path.read_text(), words):
            key = (relative, word)
            if key in ALLOWED and key not in used:
                used.add(key)
                continue
            offences.append(f"{relative}:{line}: names {what} {word!r}")
    return offences, sorted(f"{path}: {word}" for path, word in ALLOWED.keys() - used)


def test_porting_code_names_no_architecture_layer_or_input_size():
    offences, stale = porting_offenders(vocabulary())
    assert not offences, "porting/ must take these from the spec:\n" + "\n".join(offences)
    assert not stale, f"allow-list entries no longer needed (remove them): {stale}"


def test_the_vocabulary_holds_what_the_specs_name():
    words = vocabulary()
    specs = architectures().values()
    for spec in specs:
        assert words.architectures[_squeezed(spec.name)] == spec.name
        assert _squeezed(spec.tf_root) in words.architectures
        assert all(words.architectures[_squeezed(alias)] == spec.name for alias in spec.aliases)
        assert spec.eval.input_size in words.sizes
        leaves = {layer.scope.rsplit("/", 1)[1] for layer in spec.layers}
        assert leaves - {"Logits", "logits"} <= words.layers
    assert not {"Logits", "AuxLogits", "logits"} & words.layers  # the shared interface


def test_negative_control_the_naming_checker_flags_each_kind():
    words = vocabulary()
    spec = next(iter(architectures().values()))
    scope = next(layer.scope for layer in spec.layers if not layer.is_aux)
    size = spec.eval.input_size
    source = (f'"""Docstrings may say {spec.name}, {scope} and {size}."""\n'
              "# and so may comments: " + spec.tf_root + "\n"
              f"DEFAULT = {spec.name!r}\n"                       # 3: a string literal
              f"def load(x, size={size}):\n"                     # 4: an int literal
              f'    """{spec.title} again, documentation."""\n'
              f"    return x[{scope!r}], f'{{x}} at {size}x{size}'\n"  # 6: a layer, a size
              f"{spec.tf_root} = 1\n")                          # 7: an identifier
    found = {(line, what) for line, what, _ in named_specifics(source, words)}
    assert found >= {(3, "architecture"), (4, "input size"), (6, "layer"), (6, "input size"),
                     (7, "architecture")}
    assert not {line for line, _ in found} & {1, 2, 5}  # documentation is not code
    clean = "def load(spec, x):\n    return x[spec.eval.classifier], spec.eval.input_size\n"
    assert named_specifics(clean, words) == []


# --- 2. no torch, no TensorFlow: imports, a whole port; a missing extra says which --------------

def test_porting_imports_without_torch_or_tensorflow():
    run = run_blocked(NO_TF_NO_TORCH, "import porting.pipeline, porting.cli\n"
                                      "from models.spec import architectures\n"
                                      "assert architectures()")  # every folder's spec.py
    assert run.returncode == 0, run.stderr


def _write_bundle(prefix: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A V2 checkpoint of float32 zeros with these variables, written with numpy alone (one
    shard; the data file is sparse, so it costs no disk)."""
    from dtype_checkpoints import _block_contents, _mask, _varint
    from porting.read.sstable import crc32c
    from test_reader_fuzz import _table_bytes

    def field(number: int, payload: bytes) -> bytes:  # a length-delimited protobuf field
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload

    entries, offset = [(b"", b"\x08\x01" + field(3, b"\x08\x01"))], 0  # 1 shard, version 1
    for name in sorted(shapes):
        size = int(np.prod(shapes[name], dtype=np.int64)) * 4
        shape = b"".join(field(2, b"\x08" + _varint(dim)) for dim in shapes[name])
        entries.append((name.encode(), b"\x08\x01" + field(2, shape) + b"\x20" + _varint(offset)
                        + b"\x28" + _varint(size)
                        + b"\x35" + _mask(crc32c(bytes(size))).to_bytes(4, "little")))
        offset += size
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{prefix}.data-00000-of-00001", "wb") as data:
        data.truncate(offset)
    Path(f"{prefix}.index").write_bytes(_table_bytes([_block_contents(entries)],
                                                     [entries[-1][0]], snappy=False))
    return prefix


@pytest.fixture(scope="module")
def smallest():
    """The architecture with the fewest parameters: the cheapest whole port."""
    return min(architectures().values(),
               key=lambda spec: spec.parameter_count(spec.eval.num_classes))


@pytest.fixture(scope="module")
def blocked_port(smallest, tmp_path_factory):
    """(spec, folder, run): the CLI's port of a zero-valued checkpoint of ``smallest`` with the
    release's variable names, with neither torch nor TensorFlow importable."""
    folder = tmp_path_factory.mktemp("blocked_port")
    shapes = {}
    for layer in smallest.layers:
        tf_shapes = layer.kind.tf_shapes(layer.shape, smallest.eval.num_classes)
        shapes.update((name, tf_shapes[role]) for role, name in layer.variables().items())
    prefix = _write_bundle(folder / "src" / "model.ckpt", shapes)
    run = run_blocked(NO_TF_NO_TORCH, CLI, "port", "--src", prefix, "--dst",
                      folder / "out" / "model.pth", "--model-card")
    return smallest, folder / "out", run


def test_a_whole_port_needs_neither_torch_nor_tensorflow(blocked_port):
    import torch

    spec, out, run = blocked_port
    assert run.returncode == 0, run.stderr
    (weights,) = out.glob("model-*.pth")
    assert weights.with_suffix(".json").is_file() and weights.with_suffix(".md").is_file()
    state = torch.load(weights, weights_only=True)
    expected = spec.target_layout(1000)  # the port's defaults: 1000 classes, every head
    assert {key: tuple(value.shape) for key, value in state.items()} == dict(expected)


@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_command_needing_torch_says_which_extra(command, blocked_port, tmp_path):
    from PIL import Image

    _, out, _ = blocked_port
    (weights,) = out.glob("model-*.pth")
    image = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(image)
    args = {"predict": ["predict", weights, image],
            "export": ["export", "--weights", weights, "--dst", tmp_path / "x.onnx"]}[command]
    run = run_blocked(NO_TF_NO_TORCH, CLI, *args)
    assert run.returncode == 1, run.stderr
    [line] = run.stderr.strip().splitlines()  # one line: what is missing, how to get it
    assert line.startswith("error: this needs PyTorch") and "tf-porting[torch]" in line
    assert list(tmp_path.iterdir()) == [image]  # nothing written


def test_negative_control_only_an_extras_package_is_a_missing_extra():
    from porting.cli import missing_extra
    from porting.errors import PortError

    error = missing_extra(ModuleNotFoundError("No module named 'torch'", name="torch.nn"))
    assert isinstance(error, PortError) and "pip install 'tf-porting[torch]'" in str(error)
    assert missing_extra(ModuleNotFoundError("No module named 'numpy'", name="numpy")) is None
    assert missing_extra(ModuleNotFoundError("No module named 'x'")) is None  # no name: a bug


# --- the import graph --------------------------------------------------------------------------

def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(source: str, module: str, is_package: bool, known) -> set[str]:
    """The modules of ``known`` that ``source`` (module ``module``) imports, at any depth;
    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()

    def add(name: str) -> None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + [base] * bool(base))
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, "id", getattr(node.func, "attr", None)) == "import_module"):
            add(node.args[0].value)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of porting/ and models/ it imports."""
    files = {**_python_files("porting"), **_python_files("models")}
    return {module: imports_of(path.read_text(), module, path.name == "__init__.py", files)
            for module, path in files.items()}


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_graph_sees_every_kind_of_import():
    known = {"a", "a.b", "a.b.c", "a.d", "typing"}
    source = ("import a.b\n"
              "from a.b import c\n"
              "from . import d\n"
              "def f():\n    from a import d\n"
              "    return import_module('a.b.c')\n"
              "if TYPE_CHECKING:\n    from a import zzz\n")
    assert imports_of(source, "a.x", False, known) == {"a.b", "a.b.c", "a.d"}
    assert imports_of("from .b import c", "a", True, known) == {"a.b.c"}
    assert imports_of("if TYPE_CHECKING:\n    import a.d\nelse:\n    import a.b\n", "a.x",
                      False, known) == {"a.b"}


# --- 3. no import cycle ---------------------------------------------------------------------

def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules, as [a, b, ..., a]."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def connect(node: str) -> None:  # Tarjan; the graph is small, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while not group or member != node:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    found = []
    for group in groups:  # a path from the group's first module back to it, inside the group
        start = min(group)
        paths = {start: [start]}
        queue = [start]
        while queue:
            node = queue.pop(0)
            for target in sorted(graph[node] & group):
                if target == start:
                    found.append(paths[node] + [start])
                    queue = []
                    break
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    queue.append(target)
    return found


def test_no_import_cycle(graph):
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_negative_control_a_cycle_is_found_and_named():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


# --- 4. models/ imports porting/ only through its one shared leaf --------------------------

SHARED_LEAF = "porting.errors"  # PortError: the oracles' and the TF loader's one error line


def models_into_porting(graph: dict[str, set[str]]) -> list[str]:
    return [f"{module} imports {target}" for module, targets in sorted(graph.items())
            if module.split(".")[0] == "models"
            for target in sorted(targets)
            if target.split(".")[0] == "porting" and target != SHARED_LEAF]


def test_models_import_porting_only_through_its_shared_leaf(graph):
    assert not models_into_porting(graph)
    assert not graph[SHARED_LEAF]  # a leaf: it imports nothing of the project


def test_negative_control_models_importing_porting_is_flagged():
    graph = {"models.spec": {"porting.convert"}, "models.tf_runtime": {SHARED_LEAF},
             "porting.convert": {"models.spec"}}
    assert models_into_porting(graph) == ["models.spec imports porting.convert"]


# --- 5. imports run one way between porting's wings -----------------------------------------

# porting's wings, lowest first: a module may import its own wing's modules and those of wings
# before it, never one after it. A wing is a top-level module (``porting/convert.py``) or a
# subpackage (``porting/read/``). A module in no wing here fails the test: place it.
WINGS = (
    "errors",      # PortError: the leaf everything (models too) may use
    "files",       # the rules for every file the tool writes
    "progress",    # progress bars (tqdm) on long work, when stderr is a terminal
    "releases",    # the registry of published releases, downloading them
    "read",        # everything that opens a source
    "leftovers",   # what training leaves in a checkpoint besides the model (the converter's)
    "convert",     # checkpoint variables -> state dict (numpy)
    "write",       # .pth, .safetensors, manifest, model card
    "pipeline",    # a whole port: read -> convert -> write
    "preprocess",  # images as the eval config says
    "weights",     # a ported file back into its model (torch)
    "loader",      # load(): a release by name -> fetched, ported, cached model (torch lazily)
    "verify",      # the reference, comparison, report, runners
    "compare",     # foreign weight files (timm, torchvision, ...) against the checkpoint
    "onnx",        # export, graph checks, engines, ONNX verification
    "publish",     # release folders a model hub hosts (a port, its config and card)
    "predict",     # top-k classes of images
    "demo",        # make demo
    "cli",         # the commands
)


def wing_of(module: str) -> str | None:
    """"read" for porting.read.native, "convert" for porting.convert; None outside porting's
    wings (models, and the porting package itself)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "porting" and len(parts) > 1 else None


def upward_imports(graph: dict[str, set[str]], wings=WINGS) -> list[str]:
    """Imports from a wing into a later one, and modules in no listed wing."""
    rank = {wing: i for i, wing in enumerate(wings)}
    problems = []
    for module, targets in sorted(graph.items()):
        wing = wing_of(module)
        if wing is None:
            continue
        if wing not in rank:
            problems.append(f"{module} is in no wing of WINGS: add {wing!r} where it belongs")
            continue
        for target in sorted(targets):
            other = wing_of(target)
            if other in rank and rank[other] > rank[wing]:
                problems.append(f"{module} imports {target}: {wing!r} comes before {other!r}")
    return problems


def test_imports_run_one_way_between_porting_wings(graph):
    problems = upward_imports(graph)
    assert not problems, "\n".join(problems)


def test_negative_control_an_upward_import_and_an_unplaced_module_are_flagged():
    graph = {"porting.read.native": {"porting.errors", "porting.pipeline"},
             "porting.pipeline": {"porting.read.native", "models.spec"},
             "porting.gadgets": {"porting.errors"}, "models.spec": set()}
    assert upward_imports(graph) == [
        "porting.gadgets is in no wing of WINGS: add 'gadgets' where it belongs",
        "porting.read.native imports porting.pipeline: 'read' comes before 'pipeline'"]
