"""Hardening, round two (issue 19): hostile ONNX graphs given to ``verify --weights NAME.onnx``
and hostile options given to ``export``. Each test reproduces a defect of 43960f2 and fails
there; every command runs in its own process, bounded in time (and in memory where the case is
about memory).

The graphs are tiny, built with onnx's helpers, and carry the metadata of an Inception v3
export (``tf_porting.*``): they reach every check the real exports go through, and the
engines, in milliseconds. Where a check must come before any engine runs, the engines cannot
even be imported (``blocked_imports``): a graph that reached one would fail otherwise.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from blocked_imports import blocker

ROOT = Path(__file__).parent.parent
ENGINES = ("onnxruntime", "openvino")
METADATA = {"architecture": "inception_v3", "num_classes": "1000", "input_size": "299",
            "input_layout": "NCHW", "label_offset": "0"}
LOCAL_DATA = "local.bin"


# --- graphs --------------------------------------------------------------------------------

def _model(nodes, initializers=(), size=299, functions=()) -> onnx.ModelProto:
    """images [batch, 3, size, size] -> ``nodes`` -> Logits [batch, 1000], as exported."""
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])
    logits = helper.make_tensor_value_info("Logits", TensorProto.FLOAT, ["batch", 1000])
    model = helper.make_model(helper.make_graph(nodes, "g", [images], [logits],
                                                list(initializers)),
                              opset_imports=[helper.make_opsetid("", 17)],
                              functions=list(functions))
    model.ir_version = 8  # what both engines read
    for key, value in METADATA.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"tf_porting.{key}", value
    return model


def _head(source: str) -> tuple[list, list]:
    """(nodes, initializers): ``source`` [batch, 3, H, W] -> Logits [batch, 1000]."""
    weight = numpy_helper.from_array(np.full((3, 1000), 0.01, np.float32), "head_w")
    return ([helper.make_node("ReduceMean", [source], ["head_m"], keepdims=0, axes=[2, 3]),
             helper.make_node("MatMul", ["head_m", "head_w"], ["Logits"])], [weight])


def _legal(size: int = 299) -> onnx.ModelProto:
    nodes, initializers = _head("images")
    return _model(nodes, initializers, size)


def _external(name: str, shape: list[int]) -> TensorProto:
    """A float tensor whose data is in ``local.bin`` beside the graph (ONNX external data)."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape,
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", LOCAL_DATA), ("offset", "0"),
                       ("length", str(4 * int(np.prod(shape))))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _constant_outside() -> onnx.ModelProto:
    """The issue's case: a Constant node whose value is in local.bin, added to the images."""
    nodes, initializers = _head("shifted")
    return _model([helper.make_node("Constant", [], ["shift"],
                                    value=_external("shift_value", [1, 3, 1, 1])),
                   helper.make_node("Add", ["images", "shift"], ["shifted"]), *nodes],
                  initializers)


def _initializer_outside() -> onnx.ModelProto:
    nodes, initializers = _head("shifted")
    return _model([helper.make_node("Add", ["images", "shift"], ["shifted"]), *nodes],
                  [*initializers, _external("shift", [1, 3, 1, 1])])


def _branch(name: str, nodes, initializers=(), out: str = "out") -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(
        out, TensorProto.FLOAT, [1, 3, 1, 1])], list(initializers))


def _if(then_branch, else_branch) -> tuple[list, list]:
    """(nodes, initializers): Logits of images + If(true, then, else)."""
    nodes, initializers = _head("shifted")
    condition = numpy_helper.from_array(np.array(True), "condition")
    return ([helper.make_node("If", ["condition"], ["shift"], then_branch=then_branch,
                              else_branch=else_branch),
             helper.make_node("Add", ["images", "shift"], ["shifted"]), *nodes],
            [*initializers, condition])


def _zeros_branch(name: str) -> onnx.GraphProto:
    zeros = numpy_helper.from_array(np.zeros((1, 3, 1, 1), np.float32), f"{name}_zeros")
    return _branch(name, [helper.make_node("Identity", [zeros.name], ["out"])], [zeros])


def _subgraph_outside() -> onnx.ModelProto:
    """A tensor in local.bin inside an If's branch: external data at depth 1."""
    outside = _branch("then", [helper.make_node("Identity", ["inner"], ["out"])],
                      [_external("inner", [1, 3, 1, 1])])
    return _model(*_if(outside, _zeros_branch("else")))


def _endless_loop() -> onnx.ModelProto:
    """The issue's case: a Loop of 2^63 - 1 iterations whose condition stays true."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["carried_in"], ["carried_out"])], "body",
        [helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("carried_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("carried_out", TensorProto.FLOAT, [])])
    nodes, initializers = _head("shifted")
    constants = [numpy_helper.from_array(np.array(2**63 - 1, np.int64), "trips"),
                 numpy_helper.from_array(np.array(True), "keep_going"),
                 numpy_helper.from_array(np.array(0, np.float32), "start")]
    return _model([helper.make_node("Loop", ["trips", "keep_going", "start"], ["shift"],
                                    body=body, name="forever"),
                   helper.make_node("Add", ["images", "shift"], ["shifted"]), *nodes],
                  [*initializers, *constants])


def _loop_in_a_branch() -> onnx.ModelProto:
    """A Loop inside an If's branch: control flow at depth 1 (the If is refused first)."""
    inner = _endless_loop().graph.node[0]
    constants = [t for t in _endless_loop().graph.initializer
                 if t.name in ("trips", "keep_going", "start")]
    looping = helper.make_graph(
        [inner, helper.make_node("Expand", ["shift", "shape"], ["out"])], "then", [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 1, 1])],
        [*constants, numpy_helper.from_array(np.array([1, 3, 1, 1], np.int64), "shape")])
    return _model(*_if(looping, _zeros_branch("else")))


def _loop_in_a_function() -> onnx.ModelProto:
    """The endless Loop inside a model-local function that a plain-looking node calls."""
    loop = _endless_loop()
    constants = [helper.make_node("Constant", [], [t.name], value=t)
                 for t in loop.graph.initializer if t.name in ("trips", "keep_going", "start")]
    function = helper.make_function(
        "local.example", "Shift", ["x"], ["y"],
        [*constants, loop.graph.node[0], helper.make_node("Add", ["x", "shift"], ["y"])],
        [helper.make_opsetid("", 17)])
    nodes, initializers = _head("shifted")
    model = _model([helper.make_node("Shift", ["images"], ["shifted"], domain="local.example",
                                     name="innocent"), *nodes], initializers,
                   functions=[function])
    model.opset_import.append(helper.make_opsetid("local.example", 1))
    return model


def _scan() -> onnx.ModelProto:
    body = helper.make_graph(
        [helper.make_node("Identity", ["row"], ["row_out"])], "body",
        [helper.make_tensor_value_info("row", TensorProto.FLOAT, [3, 299, 299])],
        [helper.make_tensor_value_info("row_out", TensorProto.FLOAT, [3, 299, 299])])
    nodes, initializers = _head("scanned")
    return _model([helper.make_node("Scan", ["images"], ["scanned"], body=body,
                                    num_scan_inputs=1), *nodes], initializers)


def _declared_huge() -> onnx.ModelProto:
    """2^38 floats (1 TiB) from ConstantOfShape with a constant shape: onnx infers it."""
    nodes, initializers = _head("shifted")
    shape = numpy_helper.from_array(np.array([2**38], np.int64), "huge_shape")
    return _model([helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"]),
                   helper.make_node("ReduceSum", ["huge"], ["total"], keepdims=0),
                   helper.make_node("Add", ["images", "total"], ["shifted"]), *nodes],
                  [*initializers, shape])


def _runtime_huge() -> onnx.ModelProto:
    """2^38 floats again, from a shape computed from the images: no inference sees it, the
    engine tries to allocate it while running."""
    nodes, initializers = _head("shifted")
    constants = [numpy_helper.from_array(np.array(2.0**38, np.float32), "count"),
                 numpy_helper.from_array(np.array(0, np.float32), "zero"),
                 numpy_helper.from_array(np.array([1], np.int64), "one")]
    return _model([helper.make_node("ReduceMax", ["images"], ["top"], keepdims=0),
                   helper.make_node("Mul", ["top", "zero"], ["nothing"]),
                   helper.make_node("Add", ["nothing", "count"], ["size"]),
                   helper.make_node("Reshape", ["size", "one"], ["size1"]),
                   helper.make_node("Cast", ["size1"], ["shape"], to=TensorProto.INT64),
                   helper.make_node("ConstantOfShape", ["shape"], ["huge"]),
                   helper.make_node("ReduceSum", ["huge"], ["total"], keepdims=0),
                   helper.make_node("Add", ["images", "total"], ["shifted"]), *nodes],
                  [*initializers, *constants])


def _unconvertible() -> onnx.ModelProto:
    """An operation of a domain no engine knows: OpenVINO refuses it (its reason on line 5)."""
    nodes, initializers = _head("odd")
    model = _model([helper.make_node("Frobnicate", ["images"], ["odd"], domain="x.example"),
                    *nodes], initializers)
    model.opset_import.append(helper.make_opsetid("x.example", 1))
    return model


def _slow(products: int = 1000) -> onnx.ModelProto:
    """Legal and slow: [3588, 3588] matrix products in a chain (~90 GFLOP each per image)."""
    nodes, initializers = _head("slowed")
    constants = [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in (
        ("rows", [-1, 897, 299]), ("back", [-1, 3, 299, 299]), ("reps", [1, 4, 4]),
        ("starts", [0, 0]), ("ends", [897, 897]), ("axes", [1, 2]))]
    chain = [helper.make_node("Reshape", ["images", "rows"], ["x"]),
             helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "xt"], ["square"]),
             helper.make_node("Tile", ["square", "reps"], ["p0"])]
    chain += [helper.make_node("MatMul", [f"p{k}", "p0"], [f"p{k + 1}"])
              for k in range(products)]
    chain += [helper.make_node("Slice", [f"p{products}", "starts", "ends", "axes"], ["cut"]),
              helper.make_node("MatMul", ["cut", "x"], ["y"]),
              helper.make_node("Reshape", ["y", "back"], ["slowed"])]
    return _model(chain + nodes, [*initializers, *constants])


# --- running the command line -----------------------------------------------------------------

def _limit_memory(gib: int):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (gib << 30, gib << 30))
    return limit


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE", **extra}


def _cli(*args, blocked: tuple[str, ...] = (), memory_gib: int = 3, timeout: float = 120,
         env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``port-weights ARGS`` (its console script, ``porting.cli.run``) in a fresh interpreter
    under a memory limit, ``blocked`` packages unimportable."""
    code = blocker(blocked) + "from porting.cli import run; sys.argv[0] = 'port-weights'; run()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env or _env(),
                          preexec_fn=_limit_memory(memory_gib))


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "\x1b[" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def goldens(tmp_path_factory) -> Path:
    """Two 299x299 images and made-up TF Logits (1001 classes) of an Inception v3."""
    from porting.verify.goldens import GoldenRecorder, SourceInfo

    rng = np.random.default_rng(19)
    images = rng.uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32)
    logits = rng.normal(size=(2, 1001)).astype(np.float32)
    source = SourceInfo("made-up.ckpt", {}, 1001, False, False, "float32", "inception_v3")
    recorder = GoldenRecorder(tmp_path_factory.mktemp("goldens") / "goldens.h5", images,
                              ["a.jpg", "b.jpg"], source)
    recorder.recording(lambda start, stop: {"Logits": logits[start:stop]})(0, 2)
    return recorder.finish()


def _saved(model: onnx.ModelProto, folder: Path, name: str = "graph.onnx") -> Path:
    path = folder / name
    onnx.save(model, path)
    return path


def _listing(folder: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


# 3. a verified graph is one self-contained file ------------------------------------------------

@pytest.mark.parametrize("build, tensor, holder", [
    (_constant_outside, "shift_value", "Constant node 'shift'"),
    (_initializer_outside, "shift", "an initializer of the graph"),
    (_subgraph_outside, "inner", "an initializer of a subgraph of If node 'shift'"),
], ids=["constant", "initializer", "subgraph"])
def test_external_data_anywhere_is_refused_before_any_engine_runs(build, tensor, holder,
                                                                  goldens, tmp_path):
    """The graph's data in local.bin beside it: verify passed on 43960f2 and recorded parity
    for outputs the graph's hash does not cover. Now refused in one line naming the file and
    the tensor, with the engines unimportable (nothing ran)."""
    graph = _saved(build(), tmp_path)
    (tmp_path / LOCAL_DATA).write_bytes(np.zeros(3, np.float32).tobytes())
    before = _listing(tmp_path)
    line = _one_line_error(_cli("verify", "--goldens", goldens, "--weights", graph,
                                blocked=ENGINES))
    assert line.startswith(f"error: {graph}: tensor '{tensor}' ({holder}")
    assert f"keeps its data in '{LOCAL_DATA}', outside the file" in line
    assert _listing(tmp_path) == before


def test_the_issues_graph_with_data_beside_it_never_reaches_an_engine(goldens, tmp_path):
    """Swapping local.bin flipped the verdict on 43960f2; now neither version runs: the same
    refusal with the real engines installed."""
    graph = _saved(_constant_outside(), tmp_path)
    for data in (np.zeros(3, np.float32), np.full(3, 1e6, np.float32)):
        (tmp_path / LOCAL_DATA).write_bytes(data.tobytes())
        line = _one_line_error(_cli("verify", "--goldens", goldens, "--weights", graph,
                                    "--engine", "onnxruntime"))
        assert "tensor 'shift_value'" in line and LOCAL_DATA in line


# 8. control flow is refused statically; a running engine stops on SIGTERM and Ctrl-C ---------

@pytest.mark.parametrize("build, node", [
    (_endless_loop, "Loop node 'forever' in the graph"),
    (_scan, "Scan node 'scanned' in the graph"),
    (_loop_in_a_branch, "If node 'shift' in the graph"),
    (_loop_in_a_function, "Loop node 'forever' in function 'Shift'"),
], ids=["loop", "scan", "loop-in-if", "loop-in-function"])
def test_control_flow_is_refused_before_any_engine_runs(build, node, goldens, tmp_path):
    """A Loop of 2^63 - 1 iterations ran forever in both engines on 43960f2 (engines blocked
    here, so it cannot hang this test)."""
    graph = _saved(build(), tmp_path)
    line = _one_line_error(_cli("verify", "--goldens", goldens, "--weights", graph,
                                blocked=ENGINES))
    assert line.startswith(f"error: {graph}: {node}: control flow"), line


_MARK_RUNS = """
import pathlib, sys
started = pathlib.Path(sys.argv.pop(1))
import onnxruntime, openvino

def marking(run):
    def marked(*args, **kwargs):
        started.touch()
        return run(*args, **kwargs)
    return marked

onnxruntime.InferenceSession.run = marking(onnxruntime.InferenceSession.run)
openvino.InferRequest.infer = marking(openvino.InferRequest.infer)
from porting.cli import run
sys.argv[0] = "port-weights"
run()
"""


@pytest.mark.parametrize("engine, signum", [
    ("onnxruntime", signal.SIGTERM), ("openvino", signal.SIGTERM),
    ("onnxruntime", signal.SIGINT),
], ids=["onnxruntime-SIGTERM", "openvino-SIGTERM", "onnxruntime-SIGINT"])
def test_a_signal_stops_verify_while_an_engine_runs(engine, signum, goldens, tmp_path):
    """A legal graph that keeps an engine busy for minutes; the signal comes once the engine
    runs it (the engine's run is marked). On 43960f2 the handler waited for the engine: still
    running 30 s later. Now the command stops at once: 128 + N for SIGTERM, nothing written."""
    graph = _saved(_slow(), tmp_path)
    started, report = tmp_path / "started", tmp_path / "report.json"
    before = _listing(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-c", _MARK_RUNS, str(started), "verify", "--goldens", str(goldens),
         "--weights", str(graph), "--engine", engine, "--count", "1", "--json", str(report)],
        cwd=ROOT, env=_env(ORT_DISABLE_TELEMETRY="1"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=_limit_memory(4))
    try:
        deadline = time.monotonic() + 180
        while not started.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), process.communicate(timeout=30)
        time.sleep(0.5)  # well inside the engine's run
        process.send_signal(signum)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{engine} still running 30 s after {signum.name}")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode != 0 and "Traceback" not in stderr, stderr
    if signum == signal.SIGTERM:  # Ctrl-C's exit code is click's ("Aborted!") until #15
        assert process.returncode == 128 + signum, stderr
        assert stderr.strip().splitlines()[-1] == \
            "interrupted by SIGTERM; outputs left unwritten"
    started.unlink()
    assert _listing(tmp_path) == before


# 12. exit 70 for bad input: each one line, exit 1 -----------------------------------------------

def test_metadata_input_size_other_than_the_graphs_is_refused(goldens, tmp_path):
    """Metadata says 299, the graph's input is fixed at 224: exit 70 in the engine on 43960f2."""
    graph = _saved(_legal(224), tmp_path)
    line = _one_line_error(_cli("verify", "--goldens", goldens, "--weights", graph,
                                blocked=ENGINES))
    assert line == (f"error: {graph}: metadata says input_size 299 (images [batch, 3, 299, "
                    "299]), the graph declares its input 'images' as [batch, 3, 224, 224]")


def test_a_tensor_over_the_size_budget_is_refused_before_any_engine_runs(goldens, tmp_path):
    """ConstantOfShape of 2^38 floats (1 TiB): exit 70 on 43960f2, after ONNX Runtime's
    coloured log."""
    graph = _saved(_declared_huge(), tmp_path)
    line = _one_line_error(_cli("verify", "--goldens", goldens, "--weights", graph,
                                blocked=ENGINES))
    assert line.startswith(f"error: {graph}: tensor 'huge' would be [274877906944] "
                           "(1,099,511,627,776 bytes); at most 1,073,741,824")


@pytest.mark.parametrize("engine", ENGINES)
def test_an_allocation_the_engine_cannot_make_is_one_line_and_quiet(engine, goldens, tmp_path):
    """The same 2^38 floats from a shape only the run knows: on 43960f2 exit 70 and, from
    ONNX Runtime, a multi-line coloured log on stderr. Now one line naming the file, exit 1,
    under a 3 GiB address-space limit; the engine's log shows with --debug only."""
    graph = _saved(_runtime_huge(), tmp_path)
    line = _one_line_error(_cli("verify", "--goldens", goldens, "--weights", graph,
                                "--engine", engine))
    assert line.startswith(f"error: {graph}: ") and "failed running it" in line
    if engine == "onnxruntime":
        assert "Failed to allocate memory for requested buffer of size 1099511627776" in line
        debug = _cli("verify", "--goldens", goldens, "--weights", graph, "--engine", engine,
                     "--debug")
        assert debug.returncode != 0 and "[E:onnxruntime" in debug.stderr  # its log, asked for


def test_export_refuses_an_input_size_beyond_the_bound(weights, tmp_path):
    """``export --input-size 100000``: exit 70 on 43960f2 (torch asked for 120 GB to trace).
    Now one line, before the weights are even read, and nothing written."""
    result = _cli("export", "--weights", weights, "--dst", tmp_path / "x.onnx",
                  "--input-size", 100000)
    assert _one_line_error(result) == \
        "error: --input-size 100000: the graph's input must be 75 to 1024 pixels"
    assert list(tmp_path.iterdir()) == []


def test_an_input_size_the_architecture_refuses_is_found_from_shapes_alone():
    """VGG's fc6 takes 224 to 255 px: its layout on the meta device says so in milliseconds
    (the export refuses the size in one line before tracing); Inception v3 takes 300."""
    import torch

    from models.loading import create_model
    from models.spec import get_architecture
    from porting.onnx.trace import input_size_refused

    vgg = create_model(get_architecture("vgg_16"), 1000, aux_logits=False, device="meta")
    assert "fc6 takes a 7x7 pool5 map" in input_size_refused(vgg, 300)
    assert input_size_refused(vgg, 224) is None
    inception = create_model(get_architecture("inception_v3"), 1000, aux_logits=False,
                             device="meta")
    assert input_size_refused(inception, 300) is None
    assert not any(p.device != torch.device("meta") for p in vgg.parameters())


# 15. OpenVINO's informative line; no files left in TMPDIR -------------------------------------

def test_an_openvino_refusal_shows_its_reason(goldens, tmp_path):
    """On 43960f2 the line was "Exception from src/inference/src/cpp/core.cpp:NNN:"; the
    unconvertible operation was on a later line."""
    graph = _saved(_unconvertible(), tmp_path)
    line = _one_line_error(_cli("verify", "--goldens", goldens, "--weights", graph,
                                "--engine", "openvino"))
    assert line.startswith(f"error: {graph}: OpenVINO cannot load it (RuntimeError: ")
    assert "x.example.Frobnicate" in line and "Exception from" not in line


def test_verify_leaves_tmpdir_as_it_was(goldens, tmp_path):
    """ONNX Runtime's telemetry left mat-debug-<pid>.log and .ses in TMPDIR on every verify."""
    graph = _saved(_legal(), tmp_path)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {k: v for k, v in _env(TMPDIR=str(tmpdir)).items() if k != "ORT_DISABLE_TELEMETRY"}
    result = _cli("verify", "--goldens", goldens, "--weights", graph, env=env)
    assert result.returncode == 1 and result.stderr.startswith("FAIL: ONNX Runtime"), \
        result.stderr  # both engines ran (made-up logits: no parity)
    assert "OpenVINO" in result.stderr
    assert sorted(p.name for p in tmpdir.iterdir()) == []


# 10. a FIFO where a file is expected ------------------------------------------------------------

def test_a_fifo_as_the_onnx_weights_is_refused(goldens, tmp_path):
    """verify --weights x.onnx, a FIFO: onnx.load blocked forever on 43960f2."""
    fifo = tmp_path / "graph.onnx"
    os.mkfifo(fifo)
    line = _one_line_error(_cli("verify", "--goldens", goldens, "--weights", fifo,
                                blocked=ENGINES, timeout=60))
    assert line == f"error: {fifo}: refused as ONNX file: a pipe, not a regular file"


# --- export: the bytes, and where they go ----------------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A ported-like Inception v3 file (random weights, 1000 classes, no aux head)."""
    import torch

    from models.loading import create_model
    from models.spec import get_architecture

    torch.manual_seed(19)
    model = create_model(get_architecture("inception_v3"), 1000, aux_logits=False)
    path = tmp_path_factory.mktemp("weights") / "weights.pth"
    torch.save(model.state_dict(), path)
    return path


def test_export_bytes_are_the_same_for_the_same_file_and_differ_only_by_its_name(weights,
                                                                                 tmp_path):
    """The README's claim, exactly: the same weights file (name and bytes) and options give the
    same bytes in any folder; a renamed copy gives a graph that differs only in the metadata
    entry naming it (and the manifest in that name and the graph's)."""
    from porting.onnx.export import export_weights

    first = export_weights(weights, tmp_path / "a" / "graph.onnx")
    (tmp_path / "b").mkdir()
    same_name = shutil.copy(weights, tmp_path / "b" / weights.name)
    again = export_weights(same_name, tmp_path / "b" / "out" / "graph.onnx")
    assert again.written.path.read_bytes() == first.written.path.read_bytes()
    assert again.manifest.read_bytes() == first.manifest.read_bytes()

    renamed = shutil.copy(weights, tmp_path / "b" / "renamed.pth")
    other = export_weights(renamed, tmp_path / "c" / "graph.onnx")
    assert other.written.sha256 != first.written.sha256

    def without_name(path):
        model = onnx.load(path)
        entries = {p.key: p.value for p in model.metadata_props}
        kept = [p for p in model.metadata_props if p.key != "tf_porting.source_weights"]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        return entries["tf_porting.source_weights"], model.SerializeToString()

    assert without_name(first.written.path) == (weights.name, without_name(other.written.path)[1])
    assert without_name(other.written.path)[0] == "renamed.pth"
    manifests = [json.loads(m.read_text()) for m in (first.manifest, other.manifest)]
    for manifest in manifests:
        manifest["source"].pop("weights")
        manifest["output"].pop("file"), manifest["output"].pop("sha256")
        manifest["output"]["onnx_metadata"].pop("source_weights")
    assert manifests[0] == manifests[1]


@pytest.mark.skipif(not hasattr(__import__("porting.files").files, "check_derived"),
                    reason="the derived-output rule (porting.files.check_derived) is not here")
def test_export_refuses_a_fifo_at_the_hashed_graph_name(weights, tmp_path):
    """A FIFO at the graph's hashed name, --force: the export blocked writing through it on
    43960f2. A name the tool derives is never a stream."""
    from porting.onnx.export import export_weights

    name = export_weights(weights, tmp_path / "first" / "graph.onnx").written.path.name
    (tmp_path / "second").mkdir()
    fifo = tmp_path / "second" / name
    os.mkfifo(fifo)
    line = _one_line_error(_cli("export", "--weights", weights, "--dst",
                                tmp_path / "second" / "graph.onnx", "--force", timeout=120,
                                memory_gib=6))
    assert line.startswith(f"error: {fifo}: refused")
    assert sorted(p.name for p in (tmp_path / "second").iterdir()) == [name]
