"""What ``port-weights verify`` is asked to do: the options, checked against each other
before any file is read."""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from pathlib import Path

from porting.errors import PortError
from porting.files import same_file


class UsageProblem(PortError):
    """A request that cannot make sense whatever the files hold (the CLI's usage error)."""


@dataclass(frozen=True)
class VerifyRequest:
    weights: Path | None = None
    src: Path | None = None           # TF-Slim checkpoint: run TF-Slim's graph
    goldens: Path | None = None       # or a golden file recorded from one
    images_dir: Path | None = None    # default: porting.verify.photos' set
    image_count: int | None = None
    float64: bool = False
    gradients: bool = False
    label: int | None = None          # true label for --gradients (default TF's top-1)
    ema: bool = False
    record_goldens: Path | None = None
    arch: str | None = None           # force the checkpoint's architecture
    batch_size: int = 2
    engines: tuple[str, ...] | None = None  # an .onnx file: where to run it (default: all)
    json_report: Path | None = None   # the report as JSON, written by the command line

    def outputs(self) -> dict[str, Path]:
        """The files this request writes, by option (the manifest and card beside the weights
        are inputs it updates, not outputs)."""
        named = {"--record-goldens": self.record_goldens, "--json": self.json_report}
        return {option: path for option, path in named.items() if path is not None}

    def inputs(self) -> tuple[Path, ...]:
        """The files this request reads, which no output of it may replace: the weights and
        their sidecars (verify updates those in place, not through another option), the
        goldens, the checkpoint and its files."""
        from porting.write.manifest import sidecar
        from porting.read.sources import resolve_source

        files = [] if self.weights is None else [
            self.weights, sidecar(self.weights, ".json"), sidecar(self.weights, ".md")]
        files += [path for path in (self.goldens, self.src) if path is not None]
        if self.src is not None:
            with contextlib.suppress(PortError):  # an archive or a bad path: itself only
                files += resolve_source(self.src).files
        return tuple(files)

    def check(self) -> None:
        """UsageProblem if the options contradict each other or ask for nothing."""
        if (self.src is None) == (self.goldens is None):
            raise UsageProblem("give the reference: --src CHECKPOINT or --goldens FILE.h5 "
                               "(one of them)")
        if self.goldens is not None and (self.gradients or self.record_goldens):
            raise UsageProblem("--gradients and --record-goldens need TensorFlow and the "
                               "checkpoint (--src), not --goldens")
        if self.weights is None and self.record_goldens is None:
            raise UsageProblem("nothing to do: give --weights FILE to verify, or "
                               "--record-goldens FILE.h5")
        if self.onnx and (self.float64 or self.gradients or self.record_goldens):
            raise UsageProblem("--float64, --gradients and --record-goldens need a ported "
                               ".pth/.safetensors file: an ONNX export is float32 and runs "
                               "forward only")
        if self.engines and not self.onnx:
            raise UsageProblem("--engine runs an exported .onnx --weights file")
        for (first, a), (second, b) in itertools.combinations(self.outputs().items(), 2):
            if same_file(a, b):
                raise UsageProblem(f"{first} {a} and {second} {b} name the same file: give "
                                   "each output its own")

    @property
    def onnx(self) -> bool:
        """Whether the weights are an exported ONNX graph (``porting.onnx.verify`` opens it)."""
        return self.weights is not None and self.weights.suffix == ".onnx"
