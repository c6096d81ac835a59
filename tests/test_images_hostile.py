"""Hostile and unusual images (issue 19: defects 9, 12's corrupt PNG, 14): preprocessing bounded
by the output whatever the image's shape, bit for bit what it gave for photos; 16-bit images
scaled, not clipped; damaged files one line; ``predict`` run a batch at a time.

Cases that could exhaust memory run in a subprocess under ``RLIMIT_AS`` and a timeout.
"""
from __future__ import annotations

import dataclasses
import io
import os
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import porting
import pytest
from click.testing import CliRunner
from PIL import Image

from models.spec import architectures, get_architecture
from porting.cli import main
from porting.errors import PortError
from porting.preprocess import MAX_ASPECT_RATIO, load_image, tf_slim_eval
from porting.verify.photos import PHOTOS, photo_dir

CODE_ROOT = Path(porting.__file__).resolve().parents[1]  # subprocesses run the code under test
MEMORY_LIMIT = 2 << 30
TIMEOUT = 120
INCEPTION = get_architecture("inception_v3").eval
VGG = get_architecture("resnet_v1_50").eval  # TF-Slim's vgg_preprocessing


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_python(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(CODE_ROOT)}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env, cwd=tmp_path, preexec_fn=_limit_memory)


LOAD = """
import sys
import numpy as np
from models.spec import get_architecture
from porting.errors import PortError
from porting.preprocess import load_image
try:
    image = load_image(sys.argv[1], get_architecture(sys.argv[2]).eval, sys.argv[3])
except PortError as err:
    sys.exit(f"error: {err}")
assert np.isfinite(image).all()
print(*image.shape)
"""


def load_in_subprocess(tmp_path: Path, path: Path, arch: str, method: str):
    """``load_image`` in a subprocess: at most 2 GiB of address space, 120 s."""
    return run_python(tmp_path, "-c", LOAD, path, arch, method)


def one_error_line(run) -> str:
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), (
        run.returncode, run.stderr[-2000:])
    return lines[0]


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def save_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


# --- defect 9: work bounded by the output ------------------------------------------------------

@pytest.mark.parametrize("width, height", [(1200, 1), (1, 1200), (80000, 1), (1, 80000)])
@pytest.mark.parametrize("arch", ["resnet_v1_50", "inception_v3"])
def test_a_strip_is_preprocessed_in_bounded_memory(tmp_path, width, height, arch):
    """43960f2, ResNet v1 (vgg_preprocessing): 1x1200 took 4.9 GB, 1x80000 exited 70 trying to
    allocate 58.6 GiB, 80000x1 an IndexError; now each costs what a photo does."""
    path = save_png(tmp_path / "strip.png", noise(height, width))
    assert path.stat().st_size < 300_000
    run = load_in_subprocess(tmp_path, path, arch, "tf-slim")
    size = get_architecture(arch).eval.input_size
    assert run.returncode == 0 and run.stdout.split() == [str(size), str(size), "3"], run.stderr


@pytest.mark.parametrize("width, height", [(80000, 1), (1, 1200), (101, 1)])
def test_timm_refuses_an_aspect_ratio_beyond_its_limit_in_one_line(tmp_path, width, height):
    """43960f2: 80000x1 with --preprocess timm took 7 GB, then exit 70 (PIL resizes the whole
    image: 342 x 27 million pixels)."""
    path = save_png(tmp_path / "strip.png", noise(height, width))
    line = one_error_line(load_in_subprocess(tmp_path, path, "inception_v3", "timm"))
    assert line == (f"error: {path}: image of {width}x{height} pixels: --preprocess timm resizes "
                    f"the whole image and takes aspect ratios up to {MAX_ASPECT_RATIO}:1 "
                    "(--preprocess tf-slim computes only the crop)")


def test_timm_takes_an_aspect_ratio_at_its_limit(tmp_path):
    path = save_png(tmp_path / "wide.png", noise(3, 3 * MAX_ASPECT_RATIO))
    assert load_image(path, INCEPTION, "timm").shape == (299, 299, 3)


def _literal_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """43960f2's resize_bilinear_legacy, verbatim: the whole image resized."""
    def axis(in_size, out_size):
        scale = np.float32(in_size / out_size)
        position = np.arange(out_size, dtype=np.float32) * scale
        lower = np.floor(position).astype(np.int64)
        upper = np.minimum(lower + 1, in_size - 1)
        return lower, upper, position - lower.astype(np.float32)

    top, bottom, wy = axis(image.shape[0], height)
    left, right, wx = axis(image.shape[1], width)
    image = image.astype(np.float32)
    wx, wy = wx[None, :, None], wy[:, None, None]
    upper = image[top][:, left] + (image[top][:, right] - image[top][:, left]) * wx
    lower = image[bottom][:, left] + (image[bottom][:, right] - image[bottom][:, left]) * wx
    return upper + (lower - upper) * wy


def _literal_tf_slim(pixels: np.ndarray, config) -> np.ndarray:
    """43960f2's two TF-Slim paths: the whole image resized, then cropped."""
    mean = np.asarray(config.mean, np.float32)
    std = np.asarray(config.std, np.float32)
    size = config.input_size
    if config.method == "inception":
        image = pixels.astype(np.float32) / 255.0
        h, w = image.shape[:2]
        top, left = int((h - h * config.crop_fraction) / 2), int((w - w * config.crop_fraction) / 2)
        image = _literal_resize(image[top:h - top, left:w - left], size, size)
        return (image - mean) / std
    scale = np.float32(config.resize_side) / np.float32(min(pixels.shape[:2]))
    height, width = (int(np.rint(np.float32(side) * scale)) for side in pixels.shape[:2])
    image = _literal_resize(pixels.astype(np.float32), height, width)
    top, left = (height - size) // 2, (width - size) // 2
    return (image[top:top + size, left:left + size] - 255 * mean) / (255 * std)


def _shapes() -> list[tuple[int, int]]:
    rng = np.random.default_rng(19)
    return [(1, 1), (1, 2), (2, 1), (1, 300), (300, 1), (5, 300), (7, 9), (224, 224),
            (256, 257), (299, 300), (1000, 37)] + [tuple(rng.integers(1, 900, 2)) for _ in range(12)]


@pytest.mark.parametrize("method", ["inception", "vgg"])
def test_only_the_crop_is_computed_bit_for_bit_as_before(method):
    """The window of the resized image that is kept, computed alone, has the bits of the whole
    resize then the crop (43960f2's code, above): on the photos and on odd shapes."""
    config = next(spec.eval for spec in architectures().values() if spec.eval.method == method)
    images = [np.asarray(Image.open(photo_dir() / name).convert("RGB")) for name in PHOTOS]
    images += [noise(h, w, seed=i) for i, (h, w) in enumerate(_shapes())]
    for pixels in images:
        ours, literal = tf_slim_eval(pixels, config), _literal_tf_slim(pixels, config)
        assert ours.shape == literal.shape == (config.input_size, config.input_size, 3)
        np.testing.assert_array_equal(ours.view(np.uint32), literal.view(np.uint32),
                                      err_msg=str(pixels.shape))


def test_the_last_source_row_of_a_long_axis_is_not_overrun():
    """float32 positions of a very long resized axis can round up to the source's size:
    43960f2 indexed past the image (IndexError, exit 70) on a 1x80000 strip."""
    config = dataclasses.replace(VGG, resize_side=256)
    pixels = noise(80000, 1)
    assert tf_slim_eval(pixels, config).shape == (224, 224, 3)


# --- defect 14: 16-bit images ------------------------------------------------------------------

def _png16(path: Path, samples: np.ndarray) -> Path:
    """A 16-bit PNG (greyscale for HxW, RGB for HxWx3) written byte by byte."""
    height, width = samples.shape[:2]
    color_type = 0 if samples.ndim == 2 else 2
    rows = samples.reshape(height, -1).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("method", ["tf-slim", "timm"])
@pytest.mark.parametrize("photo, kind", [("camera.png", "png"), ("camera.png", "pgm"),
                                         ("camera.png", "tiff"), ("astronaut.png", "png")])
def test_a_16_bit_photo_preprocesses_as_its_8_bit_original(tmp_path, photo, kind, method):
    """43960f2 clipped 16-bit greyscale to white (PIL's convert("RGB") of mode I;16: 99.6% of
    the pixels at 255) and classified it. Each 8-bit value v stored as 257 v (the full 16-bit
    range) must give the 8-bit photo's input exactly."""
    original = photo_dir() / photo
    with Image.open(original) as image:
        pixels = np.asarray(image.convert("RGB" if image.mode != "L" else "L"))
    wide = pixels.astype(np.uint16) * 257
    if kind == "png":
        path = _png16(tmp_path / "photo16.png", wide)
    elif kind == "pgm":  # PIL reads 16-bit PGM as mode "I"
        path = tmp_path / "photo16.pgm"
        height, width = wide.shape
        path.write_bytes(b"P5 %d %d 65535\n" % (width, height) + wide.astype(">u2").tobytes())
    else:  # mode I;16
        path = tmp_path / "photo16.tif"
        Image.fromarray(wide).save(path)
    config = VGG if method == "tf-slim" else INCEPTION
    expected = load_image(original, config, method)
    np.testing.assert_array_equal(load_image(path, config, method), expected)


def test_a_16_bit_image_uses_the_high_byte_as_pil_does_for_colour(tmp_path):
    """Values between the 257 multiples: the high byte, as PIL reads 16-bit colour PNGs, so
    greyscale and colour 16-bit files of one scene agree."""
    samples = np.array([[0, 255, 256, 32767, 32768, 65279, 65280, 65535]], np.uint16)
    grey = load_image(_png16(tmp_path / "g.png", samples), dataclasses.replace(
        INCEPTION, crop_fraction=1.0, input_size=8, mean=(0,) * 3, std=(1 / 255,) * 3))
    colour = load_image(_png16(tmp_path / "c.png", np.repeat(samples[..., None], 3, 2)),
                        dataclasses.replace(INCEPTION, crop_fraction=1.0, input_size=8,
                                            mean=(0,) * 3, std=(1 / 255,) * 3))
    expected = (samples >> 8).astype(np.float32)
    np.testing.assert_allclose(grey[0, :, 0], expected[0], atol=1e-3)
    np.testing.assert_array_equal(grey, colour)


@pytest.mark.parametrize("mode, kind", [("F", "floating-point"), ("I", "32-bit integer")])
def test_pixels_of_no_stated_range_are_refused_in_one_line(tmp_path, mode, kind):
    path = tmp_path / f"{mode}.tif"
    Image.fromarray(np.full((8, 8), 3, np.float32 if mode == "F" else np.int32)).save(path)
    with pytest.raises(PortError) as err:
        load_image(path, INCEPTION)
    assert str(err.value) == (f"{path}: {kind} pixels (PIL mode {mode}) have no stated range; "
                              "save the image with 8 or 16 bits per channel")


# --- defect 12: damaged files, and files that are not files ------------------------------------

def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(noise(20, 20)).save(buffer, "PNG")
    return buffer.getvalue()


def _chunk_at(data: bytes, kind: bytes) -> int:
    return data.index(kind) - 4  # the chunk's length field


def _damaged(how: str) -> bytes:
    data = bytearray(_png_bytes())
    if how == "IDAT length short":  # the next chunk starts mid-data: SyntaxError "broken PNG"
        at = _chunk_at(data, b"IDAT")
        data[at:at + 4] = struct.pack(">I", 1)
    elif how == "IDAT length of 4 GiB":  # PIL reads the declared length whole: MemoryError
        at = _chunk_at(data, b"IDAT")
        data[at:at + 4] = struct.pack(">I", 0xFFFFFFF0)
    elif how == "IHDR too short":  # PIL: ValueError "Truncated IHDR chunk"
        at = _chunk_at(data, b"IHDR")
        data[at:at + 4] = struct.pack(">I", 3)
    elif how == "IDAT bytes flipped":
        at = _chunk_at(data, b"IDAT") + 12
        data[at:at + 8] = bytes(b ^ 0xFF for b in data[at:at + 8])
    return bytes(data)


@pytest.mark.parametrize("how", ["IDAT length short", "IHDR too short", "IDAT bytes flipped"])
def test_a_damaged_png_is_one_line(tmp_path, how):
    """43960f2: exit 70 for PIL's SyntaxError ("broken PNG file") and ValueError ("Truncated
    IHDR chunk"); an OSError was one line already."""
    path = tmp_path / "damaged.png"
    path.write_bytes(_damaged(how))
    line = one_error_line(load_in_subprocess(tmp_path, path, "inception_v3", "tf-slim"))
    assert line.startswith(f"error: {path}: cannot read image ("), line


def test_a_chunk_declaring_4_gib_in_a_small_file_is_not_allocated(tmp_path):
    """PIL reads the rest of an IDAT chunk whole, by its declared length: 43960f2 asked Python
    for 4 GiB (MemoryError, exit 70, under 2 GiB). Reads are capped at the file's size, and the
    image data, all there, decodes."""
    path = tmp_path / "long-chunk.png"
    path.write_bytes(_damaged("IDAT length of 4 GiB"))
    run = load_in_subprocess(tmp_path, path, "inception_v3", "tf-slim")
    assert run.returncode == 0 and run.stdout.split() == ["299", "299", "3"], run.stderr


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_an_image_that_is_not_a_file_is_one_line(tmp_path, kind):
    """A FIFO blocked 43960f2 (PIL opened it and waited for a writer)."""
    path = tmp_path / "photo.png"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")
    line = one_error_line(load_in_subprocess(tmp_path, path, "inception_v3", "tf-slim"))
    what = {"fifo": "a pipe", "folder": "a folder", "device": "a character device"}[kind]
    assert line == f"error: {path}: refused as image: {what}, not a regular file"


def test_predict_names_a_damaged_png_in_one_line(ported_files, tmp_path):
    path = tmp_path / "damaged.png"
    path.write_bytes(_damaged("IDAT length short"))
    result = CliRunner().invoke(main, ["predict", str(ported_files["1000"]),
                                       str(photo_dir() / "chelsea.png"), str(path)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: {path}: cannot read image (damaged: broken PNG "
                                    "file"), result.output


# --- defect 9: predict a batch at a time -------------------------------------------------------

def test_predict_runs_batches_of_16_with_the_output_of_one_batch(ported_files, monkeypatch):
    """43960f2 stacked every image of the command line into one batch (~13 MB each in the
    model: 400 images, 6 GB). 20 images now run as 16 + 4, and print what one batch of 20
    printed."""
    import torch

    import porting.predict as predict
    from porting.weights import load_ported

    sizes = []

    def load_counting(path):
        model = load_ported(path)
        model.register_forward_pre_hook(lambda module, inputs: sizes.append(len(inputs[0])))
        return model

    monkeypatch.setattr(predict, "load_ported", load_counting)
    images = [str(photo_dir() / PHOTOS[i % 4]) for i in range(20)]
    weights = ported_files["1001"]
    result = CliRunner().invoke(main, ["predict", str(weights), *images])
    assert result.exit_code == 0, result.output
    assert sizes == [16, 4]

    model = load_ported(weights)  # the single batch of 43960f2
    batch = np.stack([load_image(path, INCEPTION) for path in images])
    with torch.inference_mode():
        logits = model(torch.from_numpy(batch).permute(0, 3, 1, 2))
    from models.spec import ClassLayout

    layout = ClassLayout.of(INCEPTION, model.num_classes)
    expected = []
    for path, classes in zip(images, predict.top_predictions(logits, 5, layout)):
        expected.append(path)
        expected += [f"  {rank}. {c.probability:7.2%}  {c.name}  [{c.label}]"
                     for rank, c in enumerate(classes, 1)]
    assert result.output.splitlines() == expected
