"""The model card beside a ported file (``--model-card``): Markdown built from its manifest.

Everything the card says comes from the ``Manifest`` (``porting.write.manifest``) and from the
architecture's spec: its eval config (the input recipe, the class layout), its parameter
count, its paper; the release's facts from the registry.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from models.spec import ClassLayout, get_architecture
from porting.errors import PortError
from porting.releases.registry import load_registry

if TYPE_CHECKING:  # the manifest module builds cards; this one only reads its records
    from porting.write.manifest import Manifest

COMPETITION_BIBTEX = """@article{kurakin2018adversarial,
  title   = {Adversarial Attacks and Defences Competition},
  author  = {Kurakin, Alexey and Goodfellow, Ian and Bengio, Samy and others},
  journal = {arXiv preprint arXiv:1804.00097},
  year    = {2018}
}"""


def citation() -> list[str]:
    """A card's citation section up to its papers: the heading and the competition's BibTeX."""
    return ["## Citation", "", "```bibtex", COMPETITION_BIBTEX, "```", ""]


def classes_line(layout: ClassLayout) -> str:
    """What the outputs of a file with ``layout`` are, in words."""
    if layout.offset:
        return (f"{layout.outputs}: index 0 is TF-Slim's \"background\" class, "
                f"{layout.offset}..{layout.outputs - 1} the ImageNet-1k classes (TF's order)")
    if layout.dropped:
        return (f"{layout.outputs} ImageNet-1k classes; TF-Slim's background row 0 was "
                f"dropped, so index i here is TF's index i + {layout.dropped} (timm's layout)")
    return (f"{layout.outputs} ImageNet-1k classes, as the source had them "
            "(no background class)")


def channels(values) -> str:
    return str(values[0]) if len(set(values)) == 1 else ", ".join(f"{v:.4g}" for v in values)


def crop_line(prep) -> str:
    if prep.method == "vgg":
        return f"resize the shorter side to {prep.resize_side}, then central crop {prep.input_size}"
    return f"central crop {prep.crop_fraction} of the image, then resize"


def _batch_norm_line(spec, fold_bn: bool) -> str:
    if not spec.folds_batch_norm and not spec.standalone_batch_norms:
        return "none in this architecture (nothing to fold)"
    if not fold_bn:
        return f"kept ({spec.batch_norm})"
    kept = spec.standalone_batch_norms
    return "folded into the convolutions" + (
        f"; the {kept} batch norms with no conv before them kept ({spec.batch_norm})" if kept else "")


def origin_line(source, release) -> str:
    if release and source.release_verified:
        return (f"the official {release.name}: [{release.archive}]({release.url}) "
                f"({release.title}, {release.date}; sha256 matches the pinned digest)")
    if release:
        return (f"`{Path(source.given).name}`: a checkpoint named like {release.name} (digest "
                f"not verified), the release published as [{release.archive}]({release.url}) "
                f"({release.title}, {release.date})")
    return f"`{Path(source.given).name}` (local file, {source.format})"


def parity_line(parity) -> str:
    if parity is None:
        return "not verified for this file (run a parity check)"
    return (f"max abs logit diff {parity.max_abs_diff:.3g} (bound {parity.tolerance:.3g}), "
            f"top-1 {parity.top1_agree}/{parity.images}, top-5 "
            f"{parity.top5_agree}/{parity.images} vs {parity.reference}")


def model_card(manifest: Manifest) -> str:
    """A model-zoo style Markdown card for the ported file a port's manifest describes;
    PortError if the manifest names no known architecture or an impossible class layout."""
    source, output, options = manifest.source, manifest.output, manifest.options
    if manifest.kind != "port":
        raise PortError(f"{output.file}: a model card describes ported weights, not an "
                        f"{output.format} file")
    try:
        spec = get_architecture(options.architecture)
        layout = ClassLayout.of(spec.eval, options.num_classes, source.num_classes)
    except (LookupError, ValueError) as err:
        raise PortError(f"{output.file}: its manifest cannot be described: {err}") from err
    release = load_registry().get(source.release) if source.release else None
    prep = spec.eval  # the recipe the architecture's TF-Slim models were evaluated with
    params = spec.parameter_count(options.num_classes, options.aux, options.fold_bn)
    papers = [f"- {release.paper}"] if release and release.paper != spec.paper else []
    name = Path(output.file).stem
    return "\n".join([
        f"# {name}",
        "",
        f"{spec.title} weights ported to PyTorch by tf-porting {manifest.tool.version} "
        f"for the TF-exact definition `{spec.model.replace(':', '.')}` (state-dict keys "
        + (f"as timm's `{spec.timm_keys}`)." if spec.timm_keys else
           f"as torchvision's `{spec.torchvision_keys}`)." if spec.torchvision_keys else
           "named after TF-Slim's scopes)."),
        "",
        "| | |",
        "| --- | --- |",
        f"| Source | {origin_line(source, release)} |",
        f"| Weights | `{output.file}` ({output.format}), sha256 `{output.sha256}` |",
        f"| Parameters | {params:,} ({params / 1e6:.1f} M) |",
        f"| Classes | {classes_line(layout)} |",
        f"| Aux head | {'included (AuxLogits)' if options.aux else 'not included'} |",
        f"| Batch norm | {_batch_norm_line(spec, options.fold_bn)} |",
        f"| Input | {prep.input_size}x{prep.input_size} {prep.color}, NCHW float, "
        f"values in [{prep.value_range[0]:g}, {prep.value_range[1]:g}] (mean {channels(prep.mean)}, "
        f"std {channels(prep.std)} per channel, on pixels scaled to [0, 1]) |",
        f"| Eval crop | {crop_line(prep)} |",
        f"| Interpolation | {prep.interpolation} |",
        f"| Recipe | {prep.recipe} |",
        f"| Parity | {parity_line(manifest.parity)} |",
        "",
        "## Use",
        "",
        "```python",
        "from porting.weights import load_ported  # .pth with weights_only=True, or safetensors",
        "",
        f"model = load_ported(\"{output.file}\")",
        f"logits = model(images)  # images: N x 3 x {prep.input_size} x {prep.input_size}, "
        "preprocessed as above",
        "```",
        "",
        *citation(),
        f"Architecture: {spec.paper}",
        *(["", "Training of these weights:", *papers] if papers else []),
        "",
    ])
