"""TF-Slim's eval preprocessing reimplemented in numpy from the eval config alone, against
TensorFlow's own ops and to the bit against the formulas it replaced; timm's path;
``port-weights predict``."""
import dataclasses
import inspect

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from models.spec import ClassLayout, architectures, get_architecture
from porting import preprocess
from porting.cli import main
from porting.verify.photos import PHOTOS, load_photos, photo_dir
from porting.predict import class_name
from porting.preprocess import (central_crop_box, load_image, resize_bilinear_legacy,
                                tf_slim_eval)

INCEPTION = get_architecture("inception_v3").eval
VGG = get_architecture("resnet_v1_50").eval


@pytest.fixture(scope="module")
def tf():
    from models.tf_runtime import import_tensorflow

    return import_tensorflow()


def _tf_slim_reference(tf, pixels: np.ndarray) -> np.ndarray:
    """TF-Slim's preprocess_for_eval, with TensorFlow's ops (eager)."""
    image = tf.image.convert_image_dtype(pixels, tf.float32)
    image = tf.compat.v1.image.central_crop(image, central_fraction=0.875)
    image = tf.compat.v1.image.resize_bilinear(image[None], [299, 299], align_corners=False)[0]
    return ((image - 0.5) * 2.0).numpy()


def _pixels(name: str) -> np.ndarray:
    with Image.open(photo_dir() / name) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("name", PHOTOS)
def test_tf_slim_eval_matches_tensorflow(tf, name):
    pixels = _pixels(name)
    ours, reference = tf_slim_eval(pixels, INCEPTION), _tf_slim_reference(tf, pixels)
    assert ours.shape == reference.shape == (299, 299, 3)
    diff = float(np.abs(ours - reference).max())
    print(f"{name} {pixels.shape}: max |diff| {diff:.2g}")
    assert diff <= 1e-5


def test_half_pixel_resize_would_not_match(tf):
    """The trap the notes warn about: TF2's resize (half-pixel centres) is another image."""
    pixels = _pixels("chelsea.png")
    image = tf.compat.v1.image.central_crop(tf.image.convert_image_dtype(pixels, tf.float32), 0.875)
    half_pixel = (tf.image.resize(image, [299, 299]).numpy() - 0.5) * 2.0
    assert np.abs(half_pixel - tf_slim_eval(pixels, INCEPTION)).max() > 1e-2


@pytest.mark.parametrize("shape", [(7, 9), (101, 37), (333, 500), (512, 512), (299, 300)])
def test_crop_box_is_tensorflows(tf, shape):
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(*shape, 1)
    top, left, h, w = central_crop_box(*shape, 0.875)
    expected = tf.compat.v1.image.central_crop(image, 0.875).numpy()
    np.testing.assert_array_equal(image[top:top + h, left:left + w], expected)


def test_timm_path_is_another_preprocessing():
    path = photo_dir() / "coffee.png"
    timm, slim = load_image(path, INCEPTION, "timm"), load_image(path, INCEPTION)
    assert timm.shape == slim.shape == (299, 299, 3)
    assert timm.min() >= -1 and timm.max() <= 1
    assert np.abs(timm - slim).mean() > 1e-3


def test_class_names_handle_the_background_class():
    tf_classes, timm_classes = ClassLayout.of(INCEPTION, 1001), ClassLayout.of(INCEPTION, 1000)
    assert class_name(0, tf_classes) == "background"
    assert class_name(1, tf_classes) == class_name(0, timm_classes) == "tench (n01440764)"
    assert class_name(1000, tf_classes) == class_name(999, timm_classes) == \
        "toilet tissue (n15075141)"
    assert class_name(0, ClassLayout.of(VGG, 1000)) == "tench (n01440764)"  # no background


@pytest.mark.parametrize("variant", ["1000", "1001"])
def test_predict_prints_top5_names(ported_files, variant):
    image = str(photo_dir() / "chelsea.png")
    result = CliRunner().invoke(main, ["predict", str(ported_files[variant]), image])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == image and len(lines) == 6
    assert all("%" in line and "(n" in line or "background" in line for line in lines[1:])


def test_predict_names_an_unreadable_image(ported_files, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_text("no image")
    result = CliRunner().invoke(main, ["predict", str(ported_files["1000"]), str(junk)])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {junk}: cannot read image")


def test_predict_offers_exactly_the_preprocessing_methods(ported_files):
    from porting.preprocess import METHODS

    option = next(p for p in main.commands["predict"].params if p.name == "preprocess")
    assert tuple(option.type.choices) == METHODS
    image = str(photo_dir() / "chelsea.png")
    result = CliRunner().invoke(main, ["predict", "--preprocess", "bogus",
                                       str(ported_files["1000"]), image])
    assert result.exit_code == 2 and "'tf-slim', 'timm'" in result.stderr


def _vgg_reference(tf, pixels: np.ndarray) -> np.ndarray:
    """TF-Slim's vgg_preprocessing.preprocess_for_eval (resize side 256, 224 crop), with
    TensorFlow's ops (eager), following its _aspect_preserving_resize and _central_crop."""
    height, width = (tf.constant(float(n)) for n in pixels.shape[:2])
    scale = tf.constant(256.0) / tf.minimum(height, width)
    new_height = int(tf.cast(tf.math.rint(height * scale), tf.int32))
    new_width = int(tf.cast(tf.math.rint(width * scale), tf.int32))
    image = tf.compat.v1.image.resize_bilinear(pixels[None], [new_height, new_width],
                                               align_corners=False)[0]
    top, left = (new_height - 224) // 2, (new_width - 224) // 2
    image = tf.cast(image[top:top + 224, left:left + 224], tf.float32)
    return (image - tf.constant([123.68, 116.78, 103.94])).numpy()


@pytest.mark.parametrize("name", PHOTOS[:4])
def test_vgg_eval_matches_tensorflow(tf, name):
    pixels = _pixels(name)
    ours = load_image(photo_dir() / name, VGG)
    reference = _vgg_reference(tf, pixels)
    assert ours.shape == reference.shape == (224, 224, 3)
    diff = float(np.abs(ours - reference).max())
    print(f"{name} {pixels.shape}: max |diff| {diff:.2g}")
    assert diff <= 1e-4  # on the [0, 255] scale
    inception = load_image(photo_dir() / name, get_architecture("resnet_v2_50").eval)
    assert inception.shape == (299, 299, 3)  # the v2 nets keep Inception's recipe


@pytest.mark.parametrize("height, width", [(3, 500), (500, 3), (1, 257)])
def test_strips_match_tensorflow(tf, height, width):
    """Degenerate aspect ratios, where only the kept crop of the resize is computed (a strip's
    long side resizes to tens of thousands of pixels): still TensorFlow's values."""
    pixels = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), np.uint8)
    vgg = tf_slim_eval(pixels, VGG)
    assert float(np.abs(vgg - _vgg_reference(tf, pixels)).max()) <= 1e-4
    inception = tf_slim_eval(pixels, INCEPTION)
    assert float(np.abs(inception - _tf_slim_reference(tf, pixels)).max()) <= 1e-5


# --- from the config alone, and to the bit what the literal formulas gave -------------------

def test_inception_normalisation_is_tf_slims_to_the_bit_on_every_pixel_value():
    """``(x - mean) / std`` with the config's mean = std = 0.5 is TF-Slim's ``(x - 0.5) * 2``
    in float32, bit for bit, for each of the 256 pixel values (crop 1 and resize to the same
    size are the identity, so only the normalisation acts)."""
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    config = dataclasses.replace(INCEPTION, crop_fraction=1.0, input_size=16)
    ours = tf_slim_eval(pixels, config)
    literal = (pixels.astype(np.float32) / 255.0 - 0.5) * 2.0
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours.view(np.uint32), literal.view(np.uint32))


@pytest.mark.parametrize("name", PHOTOS[:3])
def test_inception_and_vgg_paths_give_the_bits_of_the_literal_recipes(name):
    """The whole paths against the formulas they replaced: crop 0.875, resize to 299 and
    (x - 0.5) * 2 for Inception; shorter side 256, crop 224 and minus TF's [0, 255] means for
    VGG."""
    pixels = _pixels(name)
    image = pixels.astype(np.float32) / 255.0
    top, left, h, w = central_crop_box(*image.shape[:2], 0.875)
    inception = (resize_bilinear_legacy(image[top:top + h, left:left + w], 299, 299) - 0.5) * 2.0
    ours = tf_slim_eval(pixels, INCEPTION)
    np.testing.assert_array_equal(ours.view(np.uint32), inception.view(np.uint32))

    scale = np.float32(256) / np.float32(min(pixels.shape[:2]))
    height, width = (int(np.rint(np.float32(side) * scale)) for side in pixels.shape[:2])
    image = resize_bilinear_legacy(pixels.astype(np.float32), height, width)
    top, left = (height - 224) // 2, (width - 224) // 2
    vgg = image[top:top + 224, left:left + 224] - np.asarray([123.68, 116.78, 103.94], np.float32)
    ours = tf_slim_eval(pixels, VGG)
    np.testing.assert_array_equal(ours.view(np.uint32), vgg.view(np.uint32))


def test_every_architecture_names_a_method_that_gives_its_size_and_range():
    pixels = _pixels("coffee.png")
    for name, spec in architectures().items():
        config = spec.eval
        assert config.method in preprocess.TF_SLIM_METHODS, name
        image = tf_slim_eval(pixels, config)
        assert image.shape == (config.input_size, config.input_size, 3), name
        low, high = config.value_range
        assert low - 1e-5 <= image.min() and image.max() <= high + 1e-5, name
    with pytest.raises(ValueError, match="no preprocessing method 'lanczos'"):
        tf_slim_eval(pixels, dataclasses.replace(INCEPTION, method="lanczos"))
    with pytest.raises(ValueError, match="no TF1 resize op for interpolation 'bicubic'"):
        tf_slim_eval(pixels, dataclasses.replace(INCEPTION, interpolation="bicubic"))


def test_the_config_decides_every_number():
    """Nothing in porting.preprocess has a numeric default, and the loaders need the config:
    change a number in the config and the output follows."""
    for name, function in inspect.getmembers(preprocess, inspect.isfunction):
        if function.__module__ != preprocess.__name__:
            continue
        for parameter in inspect.signature(function).parameters.values():
            assert not isinstance(parameter.default, (int, float)) or \
                isinstance(parameter.default, bool), f"{name}({parameter.name}=...)"
            if parameter.name == "config":
                assert parameter.default is inspect.Parameter.empty, name
    assert inspect.signature(load_photos).parameters["config"].default is inspect.Parameter.empty
    path = photo_dir() / "coffee.png"
    smaller = dataclasses.replace(INCEPTION, input_size=97, mean=(0.25,) * 3, std=(0.25,) * 3)
    for method in preprocess.METHODS:
        assert load_image(path, smaller, method).shape == (97, 97, 3)
    image = load_image(path, smaller)
    assert image.min() >= -1 - 1e-6 and image.max() > 1.5  # (x - 0.25) / 0.25 reaches 3


def test_timm_path_follows_the_config():
    path = photo_dir() / "coffee.png"
    assert preprocess.timm_scale_size(INCEPTION) == 341 and preprocess.timm_scale_size(VGG) == 256
    vgg = load_image(path, VGG, "timm")
    assert vgg.shape == (224, 224, 3)
    assert -124 < vgg.min() < -100 and 130 < vgg.max() < 152  # VGG's mean and std, [0, 255]
