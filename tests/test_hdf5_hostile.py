"""Hostile HDF5 files: Keras weights and golden files whose objects lead out of the file
(external links, dangling soft links, external raw storage, virtual datasets), and golden files
with wrong shapes or a damaged chunk. Each is one ``error:`` line and exit 1, before any data
is read, and nothing is written. The files are built by hand with h5py (no TensorFlow): the
Keras file has Inception v3's layout and shapes, but its datasets are never written, so they
cost no disk and read as their fill value."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from models.spec import get_architecture
from porting.cli import main
from porting.errors import PortError

SPEC = get_architecture("inception_v3")
BIAS = "layers/dense/vars/1"  # keras.applications.InceptionV3's classifier bias (1000 classes)


def _vars(layers, group: str, layer_name: str):
    variables = layers.create_group(f"{group}/vars")
    variables.attrs["name"] = layer_name
    return variables


def _keras3_file(path) -> None:
    """A Keras 3 ``.weights.h5`` of keras.applications.InceptionV3 (zeros; BN variance 1),
    but for the classifier bias."""
    convs = [layer for layer in SPEC.layers if layer.kind.name == "conv_bn" and not layer.is_aux]
    with h5py.File(path, "w") as f:
        layers = f.create_group("layers")
        for i, layer in enumerate(convs):
            suffix = f"_{i}" if i else ""
            out_chs, in_chs, kh, kw = layer.shape
            _vars(layers, f"conv2d{suffix}", f"conv2d{suffix}").create_dataset(
                "0", shape=(kh, kw, in_chs, out_chs), dtype="f4", chunks=True)
            norm = _vars(layers, f"batch_normalization{suffix}", f"batch_normalization{suffix}")
            for j, fill in enumerate((0.0, 0.0, 1.0)):  # beta, moving mean, moving variance
                norm.create_dataset(str(j), shape=(out_chs,), dtype="f4", fillvalue=fill)
        dense = _vars(layers, "dense", "predictions")
        dense.create_dataset("0", shape=(SPEC.classifier.shape[0], 1000), dtype="f4", chunks=True)


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    """keras_file(path, bias): a copy of that file at ``path``, where ``bias(f, vars_group)``
    creates the classifier bias ``1``."""
    base = tmp_path_factory.mktemp("keras") / "base.weights.h5"
    _keras3_file(base)

    def copy(path, bias):
        shutil.copyfile(base, path)
        with h5py.File(path, "a") as f:
            bias(f, f["layers/dense/vars"])
    return copy


@pytest.fixture()
def outside(tmp_path):
    """Files outside the weights file: a 'secret' of raw bytes and an HDF5 file with a bias."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.full(1000, 42.0, np.float32).tobytes())
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["bias"] = np.full(1000, 42.0, np.float32)
    return secret, other


def _virtual(f, group, source):
    layout = h5py.VirtualLayout(shape=(1000,), dtype="f4")
    layout[:] = h5py.VirtualSource(str(source), "bias", shape=(1000,))
    group.create_virtual_dataset("1", layout)


KERAS_CASES = {
    # case: (how the classifier bias is made, what the one line names)
    "external link": (lambda f, g, secret, other: g.__setitem__(
        "1", h5py.ExternalLink(str(other), "/bias")), f"{BIAS} is an external link to "),
    "external raw storage": (lambda f, g, secret, other: g.create_dataset(
        "1", shape=(1000,), dtype="f4", external=[(str(secret), 0, 4000)]),
        f"dataset {BIAS} keeps its data in 1 external file(s) ("),
    "virtual dataset": (lambda f, g, secret, other: _virtual(f, g, other),
                        f"dataset {BIAS} is a virtual dataset"),
    "dangling soft link": (lambda f, g, secret, other: g.__setitem__(
        "1", h5py.SoftLink("/no/such/bias")), f"soft link {BIAS} -> /no/such/bias leads nowhere"),
    "soft link looping": (lambda f, g, secret, other: g.__setitem__(
        "1", h5py.SoftLink(f"/{BIAS}/x")), f"soft link {BIAS} -> /{BIAS}/x leads nowhere"),
    "soft link out through an external link": (lambda f, g, secret, other: (
        f.__setitem__("elsewhere", h5py.ExternalLink(str(other), "/")),
        g.__setitem__("1", h5py.SoftLink("/elsewhere/bias"))),
        "elsewhere is an external link to "),
    "unused external link": (lambda f, g, secret, other: (
        g.create_dataset("1", shape=(1000,), dtype="f4"),
        f.__setitem__("junk", h5py.ExternalLink(str(other), "/bias"))),
        "junk is an external link to "),
}


@pytest.mark.parametrize("case", list(KERAS_CASES))
def test_keras_file_leading_outside_is_refused_before_reading(case, keras_file, outside,
                                                             tmp_path):
    from porting.read.keras_h5 import KerasReader

    make, named = KERAS_CASES[case]
    path = tmp_path / "inception_v3.weights.h5"
    keras_file(path, lambda f, g: make(f, g, *outside))
    with pytest.raises(PortError) as err:
        KerasReader(path).close()
    message = str(err.value)
    assert message.startswith(f"{path}: {named}"), message
    assert len(message.splitlines()) == 1
    h5py.File(path, "w").close()  # the reader closed it (h5py refuses to truncate an open file)


@pytest.mark.parametrize("case", ["external raw storage", "external link"])
def test_port_of_keras_file_leading_outside_exits_1_and_writes_nothing(case, keras_file, outside,
                                                                       tmp_path):
    make, named = KERAS_CASES[case]
    path = tmp_path / "inception_v3.weights.h5"
    keras_file(path, lambda f, g: make(f, g, *outside))
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(main, ["--src", str(path), "--dst", str(out / "k.pth"),
                                       "--no-aux"])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"error: {path}: {named}"), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert list(out.iterdir()) == []


def test_keras_soft_link_inside_the_file_is_read(keras_file, tmp_path):
    """Links that stay in the file are HDF5's business, not an attack."""
    from porting.read.keras_h5 import KerasReader

    def bias(f, group):
        f.create_dataset("spare/bias", data=np.arange(1000, dtype=np.float32))
        group["1"] = h5py.SoftLink("/spare/bias")

    path = tmp_path / "inception_v3.weights.h5"
    keras_file(path, bias)
    reader = KerasReader(path)
    try:
        name = SPEC.classifier.variables()["bias"]
        assert reader.stored_name(name) == "predictions/bias"
        np.testing.assert_array_equal(reader.read(name), np.arange(1000, dtype=np.float32))
    finally:
        reader.close()


# --- golden files -------------------------------------------------------------------------------

N = 2


def _golden_file(path) -> None:
    """A golden file as the recorder writes it: two images, Logits, AuxLogits and one map."""
    from porting.verify.goldens import FORMAT

    rng = np.random.default_rng(0)
    chunked = {"compression": "gzip", "shuffle": True}
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": FORMAT, "checkpoint": "ckpt",
                        "checkpoint_sha256": json.dumps({"ckpt.index": "0" * 64}),
                        "num_classes": 1001, "aux": True, "ema": False, "dtype": "float32",
                        "architecture": "inception_v3"})
        f.create_dataset("inputs", data=rng.uniform(-1, 1, (N, 299, 299, 3)).astype(np.float32),
                         chunks=(1, 299, 299, 3), **chunked)
        f["image_names"] = np.array([f"{i}.png" for i in range(N)], dtype=h5py.string_dtype())
        for name, shape in (("Logits", (1001,)), ("AuxLogits", (1001,)),
                            ("Conv2d_1a_3x3", (149, 149, 32))):
            f.create_dataset(f"end_points/{name}", data=rng.normal(size=(N, *shape)).astype(
                np.float32), chunks=(1, *shape), **chunked)


@pytest.fixture(scope="module")
def golden_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("goldens") / "base.h5"
    _golden_file(base)
    return base


@pytest.fixture()
def golden(golden_base):
    """golden(path, edit): a copy of the recorder-like golden file at ``path``, then edit(f)."""
    def copy(path, edit=None):
        shutil.copyfile(golden_base, path)
        if edit is not None:
            with h5py.File(path, "a") as f:
                edit(f)
    return copy


def _replace(name, **kwargs):
    def edit(f):
        del f[name]
        f.create_dataset(name, **kwargs)
    return edit


def _external_inputs(secret):
    def edit(f):
        del f["inputs"]
        size = N * 299 * 299 * 3 * 4
        secret.write_bytes(np.zeros(size, np.uint8).tobytes())
        f.create_dataset("inputs", shape=(N, 299, 299, 3), dtype="f4",
                         external=[(str(secret), 0, size)])
    return edit


def _virtual_logits(other):
    def edit(f):
        del f["end_points/Logits"]
        layout = h5py.VirtualLayout(shape=(N, 1001), dtype="f4")
        layout[:] = h5py.VirtualSource(str(other), "logits", shape=(N, 1001))
        f["end_points"].create_virtual_dataset("Logits", layout)
    return edit


GOLDEN_CASES = {
    # case: (damage, start of the message after "<path>: ")
    "inputs 3-D": (_replace("inputs", shape=(N, 299, 299), dtype="f4"),
                   f"inputs are [{N}, 299, 299] float32; a golden file of Inception v3 holds "
                   "[N, 299, 299, 3] float32 images"),
    "inputs 4 channels": (_replace("inputs", shape=(N, 299, 299, 4), dtype="f4"),
                          f"inputs are [{N}, 299, 299, 4] float32"),
    "inputs integers": (_replace("inputs", shape=(N, 299, 299, 3), dtype="u1"),
                        f"inputs are [{N}, 299, 299, 3] uint8"),
    "inputs float64 in a float32 file": (_replace("inputs", shape=(N, 299, 299, 3), dtype="f8"),
                                         f"inputs are [{N}, 299, 299, 3] float64"),
    "inputs too small": (_replace("inputs", shape=(N, 8, 8, 3), dtype="f4"),
                         f"inputs are [{N}, 8, 8, 3] float32"),
    "no inputs rows": (_replace("inputs", shape=(0, 299, 299, 3), dtype="f4"),
                       "inputs are [0, 299, 299, 3] float32"),
    "inputs a group": (lambda f: (f.__delitem__("inputs"), f.create_group("inputs")),
                       "inputs is no dataset"),
    "Logits with too many rows": (_replace("end_points/Logits", shape=(N + 1, 1001), dtype="f4"),
                                  f"end_points/Logits is [{N + 1}, 1001] float32; expected "
                                  f"float rows for the {N} inputs"),
    "Logits with other classes": (_replace("end_points/Logits", shape=(N, 1000), dtype="f4"),
                                  f"end_points/Logits is [{N}, 1000] float32; expected "
                                  f"[{N}, 1001] class scores"),
    "map with too few rows": (_replace("end_points/Conv2d_1a_3x3", shape=(1, 149, 149, 32),
                                       dtype="f4"),
                              "end_points/Conv2d_1a_3x3 is [1, 149, 149, 32] float32"),
    "map of strings": (_replace("end_points/Conv2d_1a_3x3", shape=(N, 3),
                                dtype=h5py.string_dtype()),
                       f"end_points/Conv2d_1a_3x3 is [{N}, 3] object"),
    "end point a group": (lambda f: f.create_group("end_points/Mixed_5b"),
                          "end_points/Mixed_5b is no dataset"),
    "no Logits": (lambda f: f.__delitem__("end_points/Logits"),
                  "incomplete golden file: no end point 'Logits'"),
    "names missing one": (_replace("image_names", data=np.array(["a"], dtype=object),
                                   dtype=h5py.string_dtype()),
                          f"image_names are [1] object; expected [{N}] strings"),
    "unknown architecture": (lambda f: f.attrs.__setitem__("architecture", "resnet\n50"),
                             "recorded from architecture 'resnet\\n50', none of "),
    "unknown dtype": (lambda f: f.attrs.__setitem__("dtype", "int8"),
                      "recorded in 'int8'; golden files are float32 or float64"),
}


@pytest.fixture(scope="module")
def model():
    from models.loading import create_model

    return create_model(SPEC, num_classes=1001, aux_logits=True, fold_bn=False).eval()


@pytest.fixture()
def verify_with_model(model, monkeypatch):
    """``port-weights verify --goldens`` with the weights file replaced by a fresh Inception v3
    (1001 classes, aux): every golden tested here is refused before its numbers matter."""
    import porting.verify.torch_runner

    monkeypatch.setattr(porting.verify.torch_runner, "load_ported", lambda path: model)

    def verify(golden, tmp_path):
        report = tmp_path / "out" / "report.json"
        report.parent.mkdir()
        result = CliRunner().invoke(main, ["verify", "--goldens", str(golden), "--weights",
                                           str(tmp_path / "w.pth"), "--json", str(report)])
        return result, list(report.parent.iterdir())
    return verify


@pytest.mark.parametrize("case", list(GOLDEN_CASES))
def test_misshapen_goldens_are_one_line_at_open(case, golden, tmp_path):
    from porting.verify.goldens import Goldens

    damage, message = GOLDEN_CASES[case]
    path = tmp_path / "goldens.h5"
    golden(path, damage)
    with pytest.raises(PortError) as err:
        Goldens(path).close()
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)
    assert len(str(err.value).splitlines()) == 1
    h5py.File(path, "w").close()  # closed again


@pytest.mark.parametrize("case", ["inputs integers", "Logits with too many rows",
                                  "map with too few rows", "unknown architecture"])
def test_misshapen_goldens_exit_1(case, golden, verify_with_model, tmp_path):
    damage, message = GOLDEN_CASES[case]
    path = tmp_path / "goldens.h5"
    golden(path, damage)
    result, left = verify_with_model(path, tmp_path)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"error: {path}: {message}"), result.stderr
    assert len(result.stderr.splitlines()) == 1 and left == []


def _corrupt_chunk(path, name: str, index: int = 1) -> None:
    """Overwrite the middle of chunk ``index`` of dataset ``name`` (gzip then fails)."""
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info(index)
    with open(path, "r+b") as raw:
        raw.seek(info.byte_offset + info.size // 4)
        raw.write(b"\xff" * (info.size // 2))


def test_golden_with_a_damaged_chunk_is_one_line_at_reading(golden, verify_with_model,
                                                             tmp_path):
    from porting.verify.goldens import Goldens

    path = tmp_path / "goldens.h5"
    golden(path)
    _corrupt_chunk(path, "end_points/Logits")
    opened = Goldens(path)  # opening reads metadata and names only
    try:
        assert opened.reference(0, 1)["Logits"].shape == (1, 1001)
        with pytest.raises(PortError, match=f"^{path}: cannot read end_points/Logits of "
                                            "images 1..1 "):
            opened.reference(1, 2)
    finally:
        opened.close()
    result, left = verify_with_model(path, tmp_path)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"error: {path}: cannot read end_points/Logits of images "
                                    "0..1 ("), result.stderr
    assert len(result.stderr.splitlines()) == 1 and left == []


def test_golden_with_damaged_inputs_is_one_line_when_read(golden, verify_with_model, tmp_path):
    """Inputs are read as they are compared, a batch at a time (issue 19, defect 7): a damaged
    chunk is one line naming the file and the images, met when they are read."""
    from porting.verify.goldens import Goldens

    path = tmp_path / "goldens.h5"
    golden(path)
    _corrupt_chunk(path, "inputs")
    opened = Goldens(path)
    try:
        assert opened.images[0:1].shape == (1, 299, 299, 3)
        with pytest.raises(PortError, match=f"^{path}: cannot read inputs of images 1..1 "
                                            "\\(OSError: "):
            opened.images[1:2]
    finally:
        opened.close()
    result, left = verify_with_model(path, tmp_path)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"error: {path}: cannot read inputs of images 0..1 ("), \
        result.stderr
    assert len(result.stderr.splitlines()) == 1 and left == []


@pytest.mark.parametrize("case", ["external raw storage", "virtual dataset", "external link",
                                  "dangling soft link"])
def test_goldens_leading_outside_are_refused_before_reading(case, golden, verify_with_model,
                                                            tmp_path):
    secret, other = tmp_path / "secret.bin", tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["logits"] = np.zeros((N, 1001), np.float32)
    damage, named = {
        "external raw storage": (_external_inputs(secret),
                                 "dataset inputs keeps its data in 1 external file(s) ("),
        "virtual dataset": (_virtual_logits(other),
                            "dataset end_points/Logits is a virtual dataset"),
        "external link": (lambda f: (f.__delitem__("end_points/Logits"), f["end_points"]
                                     .__setitem__("Logits", h5py.ExternalLink(str(other),
                                                                              "/logits"))),
                          "end_points/Logits is an external link to "),
        "dangling soft link": (lambda f: f.__setitem__("notes", h5py.SoftLink("/gone")),
                               "soft link notes -> /gone leads nowhere in the file"),
    }[case]
    path = tmp_path / "goldens.h5"
    golden(path, damage)
    result, left = verify_with_model(path, tmp_path)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"error: {path}: {named}"), result.stderr
    assert len(result.stderr.splitlines()) == 1 and left == []


def test_recorded_layout_opens(golden, tmp_path):
    """The hand-built golden file above is one the reader accepts (so each case tests its one
    damage)."""
    from porting.verify.goldens import Goldens

    path = tmp_path / "goldens.h5"
    golden(path)
    opened = Goldens(path)
    try:
        assert opened.inputs.shape == (N, 299, 299, 3) and opened.names == ["0.png", "1.png"]
        assert set(opened.reference(0, N)) == {"Logits", "AuxLogits", "Conv2d_1a_3x3"}
    finally:
        opened.close()
