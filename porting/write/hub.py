"""A release folder's ``config.json`` and ``README.md``: typed records, one writer each.

The folder is what a model hub hosts as it is, laid out as timm's own repositories are
(``timm/models/_hub.py``: ``save_for_hf``, ``push_to_hf_hub``): ``model.safetensors`` (and
``pytorch_model.bin`` on request), ``config.json`` and a ``README.md`` model card with front
matter; ours adds the port's manifest (``model.json``, beside the weights as every manifest is).

``config.json`` is timm's schema (``save_config_for_hf``): ``architecture`` (a registered timm
model), ``num_classes``, ``num_features`` and ``pretrained_cfg`` (timm's ``PretrainedCfg``
fields, nulls dropped except ``pool_size``, ``first_conv`` and ``classifier``), then a block of
our own, ``tf_porting`` (``ReleaseRecord``): the source and its sha256, the port options, the
tool, the weights files, the parity ``verify`` recorded and what timm computes with them.
``architecture`` names a timm model only where the architecture's ``TimmFacts`` say that it
computes TF's logits with these weights (tested); it is null otherwise, and the card says why
and how far timm's model is (``TimmRecord``), never a silent mismatch.

Every value comes from the architecture's spec (its ``EvalConfig``, ``ClassLayout`` and
``TimmFacts``), the manifest and the registry; the JSON keys are the records' field names, in
field order, as ``porting.write.manifest`` writes its records. No timestamps, no paths of this
machine: the same source and options give the same bytes.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from models.spec import Architecture, ClassLayout, get_architecture
from porting.releases.registry import Release, load_registry
from porting.write.card import (citation, channels, classes_line, crop_line,
                                origin_line, parity_line)
from porting.write.manifest import (FileRecord, Manifest, ParityRecord, PortOptionsRecord,
                                    SourceRecord, ToolRecord, plain_record, sidecar)

WEIGHTS = "model.safetensors"      # what timm's local-dir / hf-hub loaders prefer
TORCH_WEIGHTS = "pytorch_model.bin"  # torch.save's format, on request
CONFIG = "config.json"
CARD = "README.md"
DATASET = "imagenet-1k"
UNKNOWN_LICENSE = "other"          # a local checkpoint of no listed release
# timm's filter_pretrained_cfg keeps these keys even when null
KEEP_NULL = ("pool_size", "first_conv", "classifier")


@dataclass(frozen=True, kw_only=True)
class TimmPretrainedCfg:
    """The fields of timm's ``PretrainedCfg`` a release sets, in timm's order."""
    custom_load: bool = False
    input_size: tuple[int, int, int]
    fixed_input_size: bool = False
    interpolation: str
    crop_pct: float
    crop_mode: str = "center"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    pool_size: tuple[int, int] | None
    first_conv: str
    classifier: str
    license: str
    description: str
    origin_url: str | None
    paper_ids: tuple[str, ...] | None
    notes: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class TimmRecord:
    """What timm computes with these weights: ``model`` (whose keys they are) computes TF's
    logits (``computes_tf``, tested), or does not (``differs``: why), and then ``distance`` is
    its logits' distance from the TF-exact model's on the photos, measured when the release
    was made (null: not measured)."""
    model: str
    computes_tf: bool
    differs: str | None
    distance: ParityRecord | None


@dataclass(frozen=True, kw_only=True)
class ReleaseRecord:
    """Our block of ``config.json``."""
    tool: ToolRecord
    source: SourceRecord
    options: PortOptionsRecord
    weights: tuple[FileRecord, ...]   # the weights files, model.safetensors first
    manifest: str                     # the port's manifest in the folder
    classes: str                      # what the outputs are (the label offset), in words
    parity: ParityRecord | None       # the Logits parity verify recorded in the manifest
    timm: TimmRecord | None           # None: no timm model has these keys


@dataclass(frozen=True, kw_only=True)
class HubConfig:
    """``config.json``: timm's keys, then ours."""
    architecture: str | None
    num_classes: int
    num_features: int
    pretrained_cfg: TimmPretrainedCfg
    tf_porting: ReleaseRecord

    def to_json(self) -> bytes:
        document = plain_record(self)
        cfg = document["pretrained_cfg"]
        document["pretrained_cfg"] = {key: value for key, value in cfg.items()
                                      if value is not None or key in KEEP_NULL}
        return (json.dumps(document, indent=2) + "\n").encode("utf8")


def paper_ids(*papers: str) -> tuple[str, ...]:
    """The arXiv ids the papers' citations name, each once, in order."""
    found = [match for paper in papers for match in re.findall(r"arXiv:\d{4}\.\d{4,5}", paper)]
    return tuple(dict.fromkeys(found))


def hub_config(spec: Architecture, manifest: Manifest, release: Release | None,
               weights: tuple[FileRecord, ...], distance: ParityRecord | None) -> HubConfig:
    """The folder's config for weights of ``spec`` that ``manifest`` describes."""
    options, source, prep = manifest.options, manifest.source, spec.eval
    layout = ClassLayout.of(prep, options.num_classes, source.num_classes)
    papers = paper_ids(spec.paper, *([release.paper] if release else []))
    timm = spec.timm
    record = TimmRecord(model=timm.model, computes_tf=timm.computes_tf, differs=timm.differs,
                        distance=distance) if timm else None
    return HubConfig(
        architecture=timm.model if timm and timm.computes_tf else None,
        num_classes=options.num_classes,
        num_features=spec.num_features,
        pretrained_cfg=TimmPretrainedCfg(
            input_size=(len(prep.mean), prep.input_size, prep.input_size),
            interpolation=prep.interpolation, crop_pct=prep.crop_fraction,
            mean=prep.mean, std=prep.std, num_classes=options.num_classes,
            pool_size=timm.pool_size if timm else None, first_conv=spec.first_conv,
            classifier=prep.classifier,
            license=release.license if release else UNKNOWN_LICENSE,
            description=f"{spec.title} weights from TF-Slim's {source.checkpoint}, ported by "
                        "tf-porting (TF-exact)",
            origin_url=release.url if release else None,
            paper_ids=papers or None,
            notes=(classes_line(layout), prep.recipe)),
        tf_porting=ReleaseRecord(
            # the source's name, not the path it had on this machine (the manifest has that)
            tool=manifest.tool, source=dataclasses.replace(source, given=Path(source.given).name),
            options=options, weights=weights,
            manifest=sidecar(Path(manifest.output.file), ".json").name,
            classes=classes_line(layout), parity=manifest.parity, timm=record),
    )


# --- the model card -----------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class CardData:
    """The card's front matter, as huggingface_hub's ``ModelCardData`` names its fields."""
    library_name: str
    license: str
    tags: tuple[str, ...]
    datasets: tuple[str, ...]
    pipeline_tag: str = "image-classification"

    def front_matter(self) -> str:
        """YAML: every scalar a JSON string (which YAML reads as a double-quoted scalar)."""
        lines = ["---"]
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                lines += [f"{field.name}:", *(f"- {json.dumps(item)}" for item in value)]
            else:
                lines.append(f"{field.name}: {json.dumps(value)}")
        return "\n".join([*lines, "---"])


def _number(value: float) -> str:
    return f"{value:.3g}"


def _timm_lines(config: HubConfig, folder: str) -> list[str]:
    """The card's section on timm: loads and computes TF's logits, or does not, and how far."""
    record = config.tf_porting.timm
    if record is None:
        return ["No timm model has these state-dict keys: this folder is not for timm "
                "(`config.json` names no `architecture`). Use the TF-exact model below."]
    if record.computes_tf:
        return [f"`config.json` names timm's `{record.model}`, which loads these weights "
                "strictly and computes TF's logits with them (within the bound verify holds "
                "ports to; tested against TF's own outputs):",
                "", "```python", "import timm", "",
                f"model = timm.create_model(\"local-dir:{folder}\", pretrained=True).eval()",
                "# once uploaded: timm.create_model(\"hf-hub:ORG/NAME\", pretrained=True)",
                "```", "",
                "timm's own data config (`timm.data.resolve_data_config`) resizes before it "
                "crops; TF-Slim's recipe (above) crops first: for TF's exact numbers "
                "preprocess as the recipe says."]
    distance = record.distance
    measured = (f"Measured on the {distance.images} photos when this folder was made "
                f"(tf-porting's TF-exact model as the reference): max |logit diff| "
                f"{_number(distance.max_abs_diff)} (the bound for a port is "
                f"{_number(distance.tolerance)}), top-1 agreement "
                f"{distance.top1_agree}/{distance.images}, top-5 "
                f"{distance.top5_agree}/{distance.images}." if distance else
                "The distance was **not measured** for this folder (made without torch and "
                "timm, or with `--no-timm-distance`).")
    return [f"**timm's `{record.model}` does not compute TF's logits with these weights**, "
            f"although they load into it strictly: {record.differs}. So `config.json` names "
            "no `architecture` (null) and timm cannot load this folder by itself.",
            "", measured, "",
            f"`timm.create_model(\"{record.model}\", num_classes={config.num_classes})` with "
            "`load_state_dict(load_file(\"model.safetensors\"))` runs, but computes timm's "
            "numbers, not TF's. For TF's numbers use the TF-exact model below."]


def release_card(config: HubConfig, folder: str) -> str:
    """The folder's ``README.md``; ``folder`` names it in the usage examples."""
    block = config.tf_porting
    source, options = block.source, block.options
    spec = get_architecture(options.architecture)
    release = load_registry().get(source.release) if source.release else None
    prep = spec.eval
    cfg = config.pretrained_cfg
    params = spec.parameter_count(options.num_classes, options.aux, options.fold_bn)
    data = CardData(
        library_name="timm" if config.architecture else "pytorch", license=cfg.license,
        tags=("image-classification", *(["timm"] if config.architecture else []),
              "tf-porting", "tf-slim", *(f"arxiv:{i.removeprefix('arXiv:')}"
                                         for i in cfg.paper_ids or ())),
        datasets=(DATASET,))
    title = source.release or source.checkpoint
    weights = "; ".join(f"`{w.name}` sha256 `{w.sha256}`" for w in block.weights)
    papers = [f"- {paper}" for paper in dict.fromkeys(
        [spec.paper, *([release.paper] if release else [])])]
    return "\n".join([
        data.front_matter(),
        "",
        f"# {title}",
        "",
        f"{spec.title} weights from TF-Slim, ported by tf-porting {block.tool.version} to "
        "PyTorch: every variable mapped exactly once, and the TF-exact model computes TF's "
        "logits with them.",
        "",
        "## Model Details",
        "",
        "| | |",
        "| --- | --- |",
        f"| Source | {origin_line(source, release)} |",
        f"| Source sha256 | " + (f"archive `{source.archive.sha256}`" if source.archive else
                                 "; ".join(f"`{f.name}` `{f.sha256}`" for f in source.files))
        + " |",
        f"| Weights | {weights} |",
        f"| Parameters | {params:,} ({params / 1e6:.1f} M) |",
        f"| Classes | {block.classes} |",
        f"| Port options | {options.num_classes} classes, "
        f"{'aux head' if options.aux else 'no aux head'}"
        f"{', EMA weights' if options.ema else ''}, {options.reader} reader |",
        f"| Input | {prep.input_size}x{prep.input_size} {prep.color}, NCHW float, values in "
        f"[{prep.value_range[0]:g}, {prep.value_range[1]:g}] (mean {channels(prep.mean)}, "
        f"std {channels(prep.std)} per channel, on pixels scaled to [0, 1]) |",
        f"| Eval crop | {crop_line(prep)} |",
        f"| Interpolation | {prep.interpolation} |",
        f"| Recipe | {prep.recipe} |",
        f"| Parity with TF | {parity_line(block.parity)} |",
        f"| Manifest | `{block.manifest}`: source files, options, every variable mapped and "
        "skipped |",
        "",
        "## Model Usage",
        "",
        "### timm",
        "",
        *_timm_lines(config, folder),
        "",
        "### The TF-exact model (tf-porting)",
        "",
        "```python",
        "from safetensors.torch import load_file",
        "from models import model_for_state_dict  # pip install 'tf-porting[torch]'",
        "",
        f"model = model_for_state_dict(load_file(\"{folder}/{WEIGHTS}\"))  # eval mode",
        f"logits = model(images)  # N x 3 x {prep.input_size} x {prep.input_size}, "
        "preprocessed as the recipe says",
        "```",
        "",
        "`port-weights verify --src CHECKPOINT --weights model.safetensors` checks it against "
        "TF and records the parity in the manifest; `port-weights release` run again on this "
        "folder carries it into `config.json` and this card.",
        "",
        *citation(),
        *papers,
        "",
    ])
