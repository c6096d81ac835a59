"""Golden files: TF-Slim's end points on fixed inputs, stored in HDF5 so that a port can be
verified later with no TensorFlow installed.

Layout (format ``tf-porting-goldens/1``):
    inputs                [N, S, S, 3]      the images fed to TF-Slim (NHWC, preprocessed; S the
                                            architecture's input size, e.g. 299)
    image_names           [N]               where each image came from
    end_points/<name>     TF-Slim's end point as TF returns it (4-D ones NHWC, 1001-class logits);
                          a "/" in its name (ResNet's scoped names) stored as ":", which TF names
                          never hold, as HDF5 would read "/" as a group
    attrs: checkpoint, checkpoint_sha256 (JSON {file name: sha256}), num_classes, aux, ema,
           dtype, architecture (absent in files recorded before there were several: Inception
           v3), tensorflow, tf_slim, keras (versions that computed the end points)
Datasets are chunked per image and gzip-compressed (ReLU maps hold many zeros).

Reading one is bounded by what is compared, not by what the file declares: only the first
``--count`` images and the end points compared are read, a batch at a time, and what a file may
declare is checked against budgets (``MAX_IMAGES``, ``IMAGE_BYTES``, chunks of one image) on its
metadata, before any data is read.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from porting.errors import PortError, escaped, first_line
from porting.files import (check_input, discard_temporary, move_into_place, release,
                           temporary_beside)
from porting.read.h5safety import check_self_contained, shown

FORMAT = "tf-porting-goldens/1"
# What a golden file may declare, checked on its metadata before anything is read: at most
# MAX_IMAGES images (the recorder holds them all in memory, ~1 MB each), and at most IMAGE_BYTES
# per image of what verify reads (its input and the end points compared: ResNet-152 v2's input and
# 56 end points take 189 MiB per image in float64, the most of any architecture), each chunked
# by image, as the recorder writes it (HDF5 decompresses whole chunks), names of at most
# NAME_BYTES when of a fixed length.
MAX_IMAGES = 10_000
IMAGE_BYTES = 256 << 20
NAME_BYTES = 4096

# What h5py raises when the disk says no: OSError, or RuntimeError when HDF5 flushes on close
# (a file size limit: "unable to extend file properly")
_H5_WRITE_FAILURES = (OSError, RuntimeError)

# (start, stop) -> TF-Slim's end points for images[start:stop]
Reference = Callable[[int, int], dict]


@dataclass(frozen=True)
class SourceInfo:
    checkpoint: str
    sha256: dict[str, str]  # file name -> sha256 of each checkpoint file
    num_classes: int
    aux: bool
    ema: bool
    dtype: str
    architecture: str


class GoldenRecorder:
    """Writes a golden file as TF's end points arrive, batch by batch; the file appears (by an
    atomic rename) only once every image is in. On any failure the temporary file is removed."""

    def __init__(self, path: str | Path, inputs: np.ndarray, names: list[str], source: SourceInfo):
        import h5py

        self.path = Path(path)
        if len(inputs) > MAX_IMAGES:
            raise PortError(f"{self.path}: {len(inputs):,} images; a golden file holds at most "
                            f"{MAX_IMAGES:,}")
        try:
            fd, self._tmp = temporary_beside(self.path)
        except OSError as err:
            raise self._cannot_write(err) from err
        os.close(fd)  # h5py opens it by name, and HDF5 takes the file's flock while it writes:
        release(self._tmp)  # that lock marks it as ours from here on (see porting.files)
        self._file = None
        try:
            self._file = h5py.File(self._tmp, "w")
            self._file.attrs.update({"format": FORMAT, "checkpoint": source.checkpoint,
                                     "checkpoint_sha256": json.dumps(source.sha256),
                                     "num_classes": source.num_classes, "aux": source.aux,
                                     "ema": source.ema, "dtype": source.dtype,
                                     "architecture": source.architecture, **_versions()})
            self._dataset("inputs", inputs.shape, inputs.dtype)[...] = inputs
            self._file["image_names"] = np.array(names, dtype=h5py.string_dtype())
        except BaseException as err:
            self.abandon()
            if isinstance(err, _H5_WRITE_FAILURES):  # disk full, no permission
                raise self._cannot_write(err) from err
            raise
        self._count = len(inputs)

    def _dataset(self, name: str, shape: tuple, dtype):
        return self._file.create_dataset(name, shape=shape, dtype=dtype, chunks=(1, *shape[1:]),
                                         compression="gzip", compression_opts=4, shuffle=True)

    def recording(self, reference: Reference) -> Reference:
        """``reference``, storing everything it returns."""
        def record(start: int, stop: int) -> dict:
            outputs = reference(start, stop)
            try:
                for name, value in outputs.items():
                    key = f"end_points/{_key(name)}"
                    if key not in self._file:
                        self._dataset(key, (self._count, *value.shape[1:]), value.dtype)
                    self._file[key][start:stop] = value
            except _H5_WRITE_FAILURES as err:  # the caller abandons the recording
                raise self._cannot_write(err) from err
            return outputs
        return record

    def finish(self) -> Path:
        """Close the file and move it into place; PortError (the temporary file removed) if
        that fails."""
        try:
            self._file.close()
            move_into_place(self._tmp, self.path)
        except _H5_WRITE_FAILURES as err:
            discard_temporary(self._tmp)
            raise self._cannot_write(err) from err
        return self.path

    def _cannot_write(self, err: Exception) -> PortError:
        """``PATH: cannot write: REASON``, one line naming the golden file: HDF5's errors run
        to several lines naming the temporary file, with the system's reason inside."""
        found = re.search(r"error message = '([^'\n]*)'", str(err))
        text = found.group(1) if found else (getattr(err, "strerror", None) or str(err))
        reason = escaped(text.strip().splitlines()[0] if text.strip() else type(err).__name__)
        if getattr(self, "_tmp", None) is not None:
            reason = reason.replace(str(self._tmp), str(self.path))
        return PortError(f"{self.path}: cannot write: {reason}")

    def abandon(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
        except _H5_WRITE_FAILURES:  # flushing on close, e.g. to a full disk
            pass  # the file is going anyway
        finally:
            discard_temporary(self._tmp)


def _versions() -> dict[str, str]:
    """The versions that computed the end points (TensorFlow is loaded: it is computing them)."""
    from importlib.metadata import version

    import tensorflow as tf

    return {"tensorflow": tf.__version__, "tf_slim": version("tf-slim"), "keras": version("keras")}


def _key(end_point: str) -> str:
    return end_point.replace("/", ":")


def _name(key: str) -> str:
    return key.replace(":", "/")


_ATTRS = ("checkpoint", "checkpoint_sha256", "num_classes", "aux", "ema", "dtype")
# The one compatibility rule of the format: files recorded before there were several
# architectures have no "architecture" attribute, and are Inception v3's.
_ARCHITECTURE_BEFORE_THE_ATTRIBUTE = "inception_v3"
_DATASETS = ("inputs", "image_names", "end_points")
_DTYPES = ("float32", "float64")
_H5_FAILURES = (OSError, RuntimeError, KeyError, ValueError, TypeError)  # what h5py raises


class Goldens:
    """A golden file opened for verification: inputs, source facts and a ``Reference``.

    Opening checks, before reading any data, that the file keeps its data to itself
    (``porting.read.h5safety``), then that the layout is the recorder's: ``inputs`` [N, H, W, 3] in
    the recorded dtype (H and W the architecture's input size), N image names, and end points
    (``Logits`` among them) with N rows each, the class scores [N, num_classes]; and that what
    verify will read fits the budgets (``MAX_IMAGES``, ``IMAGE_BYTES``, chunks of one image).
    Only the first ``count`` images (default all) are read, and of the end points only those
    of the architecture in ``end_points`` (default all of them): ``images`` reads the inputs a
    slice at a time (``inputs``: all ``count`` of them at once), ``reference`` the end points. Any failure, including a damaged chunk met
    later, is a PortError naming the file."""

    def __init__(self, path: str | Path, count: int | None = None,
                 end_points: tuple[str, ...] | None = None):
        import h5py

        self.path = Path(path)
        check_input(self.path, "golden file")  # a pipe or a device is refused, not opened
        try:
            self._file = h5py.File(self.path, "r")
        except FileNotFoundError as err:
            raise PortError(f"{self.path}: no such golden file") from err
        except OSError as err:
            raise PortError(f"{self.path}: not an HDF5 golden file") from err
        try:
            check_self_contained(self.path, self._file)  # before any data is read
            self._read(count, end_points)
        except BaseException as err:
            self._file.close()
            if isinstance(err, _H5_FAILURES):  # damaged or foreign
                raise PortError(f"{self.path}: not a readable golden file "
                                f"({type(err).__name__}: {shown(first_line(err))})") from err
            raise

    def _read(self, count: int | None, wanted: tuple[str, ...] | None) -> None:
        from models.spec import get_architecture

        attrs = self._file.attrs
        if attrs.get("format") != FORMAT:
            raise PortError(f"{self.path}: not a golden file of this tool (format {FORMAT})")
        missing = [f"attribute {name!r}" for name in _ATTRS if name not in attrs] + \
            [f"dataset {name!r}" for name in _DATASETS if name not in self._file]
        if missing:
            raise PortError(f"{self.path}: incomplete golden file: no {', '.join(missing)}")
        self.source = SourceInfo(str(attrs["checkpoint"]), json.loads(attrs["checkpoint_sha256"]),
                                 int(attrs["num_classes"]), bool(attrs["aux"]), bool(attrs["ema"]),
                                 str(attrs["dtype"]),
                                 str(attrs.get("architecture", _ARCHITECTURE_BEFORE_THE_ATTRIBUTE)))
        declared = self._check_layout()
        spec = get_architecture(self.source.architecture)
        wanted = spec.end_points if wanted is None else wanted
        self.end_points = tuple(name for name in spec.end_points
                                if name in wanted and _key(name) in self._file["end_points"])
        self._check_budget(declared)
        count = declared if count is None else min(count, declared)
        self.images = GoldenImages(self, self._file["inputs"], count)
        names = self._file["image_names"]
        try:
            self.names = [n.decode() if isinstance(n, bytes) else str(n)
                          for n in names[:count]]
        except _H5_FAILURES as err:
            raise self._unreadable("image_names", 0, count, err) from err
        if len(self.names) != count:
            raise PortError(f"{self.path}: damaged golden file: read {len(self.names)} names "
                            f"of {count}")

    def _check_layout(self) -> int:
        """N, the number of images; PortError naming the file and the dataset if a dataset's
        kind, shape or dtype is not what the recorder writes (only metadata is read)."""
        import h5py

        from models.spec import architectures

        source, file = self.source, self._file
        if source.dtype not in _DTYPES:
            raise PortError(f"{self.path}: recorded in '{shown(source.dtype)}'; golden files "
                            f"are {' or '.join(_DTYPES)}")
        spec = architectures().get(source.architecture)
        if spec is None:
            raise PortError(f"{self.path}: recorded from architecture "
                            f"'{shown(source.architecture)}', none of "
                            f"{', '.join(architectures())}")
        if source.num_classes < 1:
            raise PortError(f"{self.path}: num_classes is {source.num_classes}")
        for name, kind in (("inputs", h5py.Dataset), ("image_names", h5py.Dataset),
                           ("end_points", h5py.Group)):
            if not isinstance(file[name], kind):
                raise PortError(f"{self.path}: {name} is no {kind.__name__.lower()}")
        inputs, size = file["inputs"], spec.eval.input_size
        shape = inputs.shape or ()
        if (len(shape) != 4 or shape[0] < 1 or shape[1:] != (size, size, 3)
                or inputs.dtype != np.dtype(source.dtype)):
            raise PortError(f"{self.path}: inputs are {_described(inputs)}; a golden file of "
                            f"{spec.title} holds [N, {size}, {size}, 3] {source.dtype} images")
        count = inputs.shape[0]
        if count > MAX_IMAGES:
            raise PortError(f"{self.path}: declares {count:,} images; a golden file holds at "
                            f"most {MAX_IMAGES:,}")
        names = file["image_names"]
        length = h5py.check_string_dtype(names.dtype)
        if names.shape != (count,) or length is None:
            raise PortError(f"{self.path}: image_names are {_described(names)}; expected "
                            f"[{count}] strings, one per input")
        if length.length is not None and length.length > NAME_BYTES:
            raise PortError(f"{self.path}: image_names are strings of {length.length:,} bytes; "
                            f"at most {NAME_BYTES:,} are read")
        group = file["end_points"]
        if _key("Logits") not in group:
            raise PortError(f"{self.path}: incomplete golden file: no end point 'Logits'")
        for name in group:
            dataset = group.get(name)
            where = f"end_points/{shown(name)}"
            if not isinstance(dataset, h5py.Dataset):
                raise PortError(f"{self.path}: {where} is no dataset")
            if (len(dataset.shape or ()) < 2 or dataset.shape[0] != count
                    or dataset.dtype.kind != "f"):
                raise PortError(f"{self.path}: {where} is {_described(dataset)}; expected "
                                f"float rows for the {count} inputs")
            if _name(name) in spec.logits_end_points and dataset.shape != (count, source.num_classes):
                raise PortError(f"{self.path}: {where} is {_described(dataset)}; expected "
                                f"[{count}, {source.num_classes}] class scores")
        return count

    def _check_budget(self, count: int) -> None:
        """PortError if what verify reads per image (the input and the end points compared)
        exceeds ``IMAGE_BYTES``, or a dataset it reads is chunked by more than one image: the
        declared shapes and chunks (metadata) against the budget, before anything is read."""
        read = [("inputs", self._file["inputs"])] + [
            (f"end_points/{shown(_key(name))}", self._file["end_points"][_key(name)])
            for name in self.end_points]
        per_image = 0
        for where, dataset in read:
            row = dataset.dtype.itemsize * int(np.prod(dataset.shape[1:], dtype=object))
            per_image += row
            if dataset.chunks is not None and dataset.chunks[0] != 1:
                raise PortError(f"{self.path}: {where} is chunked by {dataset.chunks[0]:,} "
                                "images; golden files are chunked by image")
        if per_image > IMAGE_BYTES:
            raise PortError(f"{self.path}: declares {per_image:,} bytes per image of inputs "
                            f"and end points; at most {IMAGE_BYTES:,} are read")

    @property
    def inputs(self) -> np.ndarray:
        """The first ``count`` inputs, read now, all at once (``images`` reads them by slices)."""
        return self.images[:]

    def reference(self, start: int, stop: int) -> dict:
        """TF's end points for images[start:stop]; PortError naming the file and the dataset
        if HDF5 cannot read them (a damaged chunk, a missing filter)."""
        outputs = {}
        for name in self.end_points:
            try:
                outputs[name] = self._file["end_points"][_key(name)][start:stop]
            except _H5_FAILURES as err:
                raise self._unreadable(f"end_points/{shown(name)}", start, stop, err) from err
        return outputs

    def _unreadable(self, where: str, start: int, stop: int, err: Exception) -> PortError:
        return PortError(f"{self.path}: cannot read {where} of images {start}..{stop - 1} "
                         f"({type(err).__name__}: {shown(first_line(err))})")

    def close(self) -> None:
        self._file.close()


class GoldenImages:
    """The first ``count`` inputs of a golden file, read only when sliced (as numpy):
    ``len``, ``shape``, ``dtype`` and ``images[start:stop]``, what a verification asks of
    its images."""

    def __init__(self, goldens: Goldens, dataset, count: int):
        self._goldens, self._dataset, self._count = goldens, dataset, count
        self.shape = (count, *dataset.shape[1:])
        self.dtype = dataset.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("golden images are read by contiguous slices")
        start, stop, _ = index.indices(self._count)
        try:
            return self._dataset[start:max(start, stop)]
        except _H5_FAILURES as err:
            raise self._goldens._unreadable("inputs", start, stop, err) from err

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # all ``count`` of them
        return np.asarray(self[:], dtype=dtype)


def _described(dataset) -> str:
    """A dataset's shape and dtype, as messages give them: ``[2, 5] int64``."""
    return f"[{', '.join(map(str, dataset.shape))}] {dataset.dtype}" if dataset.shape is not None \
        else f"empty ({dataset.dtype})"
