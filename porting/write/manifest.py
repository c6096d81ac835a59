"""What sits beside every ported file: a JSON manifest and, on request, a Markdown model card.

The manifest says where the weights came from (files and their sha256), how they were made
(tool version, options), what was mapped and skipped, and what was written. It has no
timestamps, so porting the same input twice gives the same manifest. Parity figures are null
until a check against the reference has run (``record_parity``).
"""
from __future__ import annotations

import contextlib
import json
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from models.spec import get_architecture
from porting.errors import PortError
from porting.files import Outputs, sha256_file
from porting.releases.registry import Release, load_registry, pinned_sha256

if TYPE_CHECKING:  # porting.verify.parity imports torch, which a port does without
    from porting.verify.parity import Parity

MANIFEST_VERSION = 1
COMPETITION_BIBTEX = """@article{kurakin2018adversarial,
  title   = {Adversarial Attacks and Defences Competition},
  author  = {Kurakin, Alexey and Goodfellow, Ian and Bengio, Samy and others},
  journal = {arXiv preprint arXiv:1804.00097},
  year    = {2018}
}"""


def tool_version() -> str:
    return version("tf-porting")


def sidecar(output: Path, suffix: str) -> Path:
    """``out/name-1a2b3c4d.pth`` -> ``out/name-1a2b3c4d.json`` (or ``.md``)."""
    return output.with_suffix(suffix)


def _file_record(path: Path, base: Path) -> dict:
    return {"name": str(path.relative_to(base)), "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def hash_source_files(checkpoint_source, archive: Path | None) -> dict:
    """Names, sizes and sha256 of the source files; call it while they exist (archives are
    unpacked only for the duration of a port)."""
    base = checkpoint_source.files[0].parent
    return {
        "archive": _file_record(archive, archive.parent) if archive else None,
        "files": [_file_record(path, base) for path in checkpoint_source.files],
    }


def source_record(given: str | Path, checkpoint_source, hashed_files: dict,
                  release: Release | None, num_classes: int) -> dict:
    """The source as the manifest records it; ``hashed_files`` from ``hash_source_files``.

    ``release`` is what the file's name matched; ``release_verified`` says whether its content
    is that release: true only when the archive's sha256 is the one pinned for the release (in
    the registry or releases.lock). An unpacked checkpoint cannot be checked against the
    archive's digest, so it is never verified."""
    archive = hashed_files.get("archive")
    expected = pinned_sha256(release.name) if release and archive else None
    return {
        "given": str(given),
        "format": checkpoint_source.format,
        "num_classes": num_classes,
        "checkpoint": checkpoint_source.prefix.name,
        "release": release.name if release else None,
        "release_verified": bool(expected) and archive["sha256"] == expected,
        "url": release.url if release else None,
        **hashed_files,
    }


def build_manifest(source: dict, output: Path, output_format: str, sha256: str, size: int,
                   header_metadata: dict | None, options: dict, variable_count: int,
                   mapped: dict, skipped: dict) -> dict:
    return {
        "manifest_version": MANIFEST_VERSION,
        "tool": {"name": "tf-porting", "version": tool_version()},
        "source": source,
        "output": {"file": output.name, "format": output_format, "bytes": size,
                   "sha256": sha256, "header_metadata": header_metadata},
        "options": options,
        "variables": {"in_source": variable_count, "mapped_count": len(mapped),
                      "skipped_count": len(skipped), "mapped": mapped, "skipped": skipped},
        "parity": None,
    }


def _dump(document: dict) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode("utf8")


def stage_sidecar(outputs: Outputs, path: Path, content: dict | str, sha256: str,
                  force: bool):
    """Stage a manifest (dict) or model card (str) of the weights with ``sha256``. An existing
    sidecar of the same weights is refreshed, the parity ``verify`` recorded in a manifest
    kept; any other file there (edited, or of other weights) is replaced only with ``force``,
    the weights' rule. Returns what was staged."""
    outputs.check(path)
    existing = path.read_bytes() if path.is_file() else None
    same_weights = False
    if existing is not None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            if isinstance(content, dict):
                recorded = json.loads(existing)
                same_weights = recorded["output"]["sha256"] == sha256
                if same_weights and recorded["parity"]:
                    content = {**content, "parity": recorded["parity"]}
            else:
                same_weights = f"sha256 `{sha256}`".encode() in existing
    payload = _dump(content) if isinstance(content, dict) else content.encode("utf8")
    if existing is not None:
        if existing == payload:
            return content
        if not (force or same_weights):
            raise PortError(f"{path}: exists with different contents; pass --force to replace it")
    outputs.add(path, payload)
    return content


def record_parity(manifest_path: Path, parity: Parity, reference: str,
                  card_path: Path | None = None) -> dict:
    """Add the figures of a passed or failed parity check to a manifest (and refresh the model
    card at ``card_path``, both or neither); return the manifest."""
    manifest = json.loads(manifest_path.read_text())
    manifest["parity"] = {
        "reference": reference, "images": parity.images, "max_abs_diff": parity.max_abs_diff,
        "tolerance": parity.tolerance, "top1_agree": parity.top1_agree,
        "top5_agree": parity.top5_agree, "passed": parity.passed,
    }
    with Outputs() as outputs:
        outputs.add(manifest_path, _dump(manifest))
        if card_path is not None:
            outputs.add(card_path, model_card(manifest).encode("utf8"))
        outputs.commit()
    return manifest


def _classes_line(options: dict, source_classes: int, offset: int) -> str:
    if options["num_classes"] == source_classes and offset:
        return (f"{source_classes}: index 0 is TF-Slim's \"background\" class, 1..1000 the "
                "ImageNet-1k classes (TF's order)")
    if options["num_classes"] < source_classes:
        return (f"{options['num_classes']} ImageNet-1k classes; TF-Slim's background row 0 was "
                "dropped, so index i here is TF's index i + 1 (timm's layout)")
    return (f"{options['num_classes']} ImageNet-1k classes, as the source had them "
            "(no background class)")


def _channels(values) -> str:
    return str(values[0]) if len(set(values)) == 1 else ", ".join(f"{v:.4g}" for v in values)


def _crop_line(prep) -> str:
    if prep.resize_side is not None:
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


def model_card(manifest: dict) -> str:
    """A model-zoo style Markdown card for the file the manifest describes."""
    source, output, options = manifest["source"], manifest["output"], manifest["options"]
    release = load_registry().get(source["release"]) if source["release"] else None
    spec = get_architecture(options["architecture"])
    prep = spec.eval  # the recipe the architecture's TF-Slim models were evaluated with
    params = spec.parameter_count(options["num_classes"], options["aux"], options["fold_bn"])
    origin = (f"the official {release.name}: [{release.archive}]({release.url}) ({release.title}, "
              f"{release.date}; sha256 matches the pinned digest)"
              if release and source.get("release_verified") else
              f"`{Path(source['given']).name}`: a checkpoint named like {release.name} (digest not "
              f"verified), the release published as [{release.archive}]({release.url}) "
              f"({release.title}, {release.date})" if release
              else f"`{Path(source['given']).name}` (local file, {source['format']})")
    parity = manifest["parity"]
    parity_line = (f"max abs logit diff {parity['max_abs_diff']:.3g} (bound {parity['tolerance']:.3g}), "
                   f"top-1 {parity['top1_agree']}/{parity['images']}, top-5 "
                   f"{parity['top5_agree']}/{parity['images']} vs {parity['reference']}"
                   if parity else "not verified for this file (run a parity check)")
    papers = [f"- {release.paper}"] if release and release.paper != spec.paper else []
    name = Path(output["file"]).stem
    return "\n".join([
        f"# {name}",
        "",
        f"{spec.title} weights ported to PyTorch by tf-porting {manifest['tool']['version']} "
        f"for the TF-exact definition `{spec.model.replace(':', '.')}` (state-dict keys "
        + (f"as timm's `{spec.timm_keys}`)." if spec.timm_keys else
           f"as torchvision's `{spec.torchvision_keys}`)." if spec.torchvision_keys else
           "named after TF-Slim's scopes)."),
        "",
        "| | |",
        "| --- | --- |",
        f"| Source | {origin} |",
        f"| Weights | `{output['file']}` ({output['format']}), sha256 `{output['sha256']}` |",
        f"| Parameters | {params:,} ({params / 1e6:.1f} M) |",
        f"| Classes | {_classes_line(options, source['num_classes'], prep.label_offset)} |",
        f"| Aux head | {'included (AuxLogits)' if options['aux'] else 'not included'} |",
        f"| Batch norm | {_batch_norm_line(spec, options['fold_bn'])} |",
        f"| Input | {prep.input_size}x{prep.input_size} {prep.color}, NCHW float, "
        f"values in [{prep.value_range[0]:g}, {prep.value_range[1]:g}] (mean {_channels(prep.mean)}, "
        f"std {_channels(prep.std)} per channel, on pixels scaled to [0, 1]) |",
        f"| Eval crop | {_crop_line(prep)} |",
        f"| Interpolation | {prep.interpolation} |",
        f"| Recipe | {prep.recipe} |",
        f"| Parity | {parity_line} |",
        "",
        "## Use",
        "",
        "```python",
        "from porting.weights import load_ported  # .pth with weights_only=True, or safetensors",
        "",
        f"model = load_ported(\"{output['file']}\")",
        f"logits = model(images)  # images: N x 3 x {prep.input_size} x {prep.input_size}, "
        "preprocessed as above",
        "```",
        "",
        "## Citation",
        "",
        "```bibtex",
        COMPETITION_BIBTEX,
        "```",
        "",
        f"Architecture: {spec.paper}",
        *(["", "Training of these weights:", *papers] if papers else []),
        "",
    ])
