"""``port-weights``: the command line. One command per verb; ``port`` is the default.

Exit codes: 0 success, 1 bad input or a failed check (one line on stderr), 2 usage error,
70 internal error (a bug: rerun with --debug and report the traceback).
"""
from __future__ import annotations

import functools
import os
import signal
import sys
from collections import Counter

import click

from porting.errors import PortError, Terminated

EXIT_BAD_INPUT = 1
EXIT_INTERNAL = 70
DEBUG = "port-weights.debug"  # key of the click context's meta: whether --debug was given


def _debugging() -> bool:
    """Whether the command being run was given ``--debug``."""
    context = click.get_current_context(silent=True)
    return bool(context is not None and context.meta.get(DEBUG))

# Packages of an extra (pyproject.toml) that a command may find missing: (what, the extra). The
# base install ports, inspects and fetches without them; TensorFlow says so itself
# (models.tf_runtime), ONNX Runtime and OpenVINO too (porting.onnx.engines).
EXTRAS = {"torch": ("PyTorch", "torch"), "safetensors": ("safetensors", "torch"),
          "onnx": ("ONNX", "onnx")}


def missing_extra(err: ModuleNotFoundError) -> PortError | None:
    """The one-line error for a package of an extra that is not installed, None for others."""
    package = (err.name or "").partition(".")[0]
    if package not in EXTRAS:
        return None
    what, extra = EXTRAS[package]
    return PortError(f"this needs {what} ({err}); install it: pip install 'tf-porting[{extra}]'")


def handles_errors(command):
    """Give a command ``--debug`` and turn its failures into one line on stderr."""

    @click.option("--debug", is_flag=True, help="Show the full traceback when something fails.")
    @functools.wraps(command)
    def wrapper(*args, debug: bool, **kwargs):
        click.get_current_context().meta[DEBUG] = debug  # e.g. the engines' logs: _debugging()
        try:
            try:
                return command(*args, **kwargs)
            except ModuleNotFoundError as err:  # an extra not installed, or a bug
                missing = missing_extra(err)
                if missing is None:
                    raise
                raise missing from err
        except PortError as err:
            if debug:
                raise
            click.echo(f"error: {err}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except (click.exceptions.Exit, click.ClickException, KeyboardInterrupt):
            raise
        except Exception as err:  # a bug, not bad input
            if debug:
                raise
            click.echo(f"internal error: {type(err).__name__}: {err} (rerun with --debug for "
                       "the traceback)", err=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper


class DefaultToPort(click.Group):
    """``port-weights --src X --dst Y`` means ``port-weights port --src X --dst Y``.

    Only options are routed to ``port``: a word that is no command (``inpsect``) is a typo,
    which click answers with "No such command"."""

    def parse_args(self, ctx, args):
        if args and args[0].startswith("-") and args[0] not in ("--help", "-h", "--version"):
            args = ["port", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultToPort, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tf-porting")
def main():
    """Port TF-Slim checkpoints (adv_inception_v3, adv_inception_resnet_v2 and family) to PyTorch.

    \b
    Typical use:
      port-weights --src adv_inception_v3.ckpt --dst out/adv_inception_v3.pth
    writes out/adv_inception_v3-<sha256[:8]>.pth (torch.hub's check_hash naming) and prints
    its path and full sha256. Run `port-weights COMMAND --help` for each command.

    Exit codes: 0 ok, 1 bad input or failed check, 2 usage error, 70 internal error.
    """


def _reader_choice():
    from porting.read.open import READERS

    return click.Choice(sorted(READERS))


def _arch_option(what: str):
    from models.spec import architectures

    return click.option("--arch", type=click.Choice(list(architectures())), metavar="NAME",
                        help=f"Force the architecture of {what} (one of: "
                             f"{', '.join(architectures())})  [default: told by the TF-Slim "
                             "root scope of its variables, or by the Keras layers]")


def _keras_applications() -> str:
    """The keras.applications models whose weight files are sources, from the specs."""
    from models.spec import architectures

    return " / ".join(spec.keras.application.rsplit(".", 1)[-1]
                      for spec in architectures().values() if spec.keras)


def _max_unpacked_option():
    from porting.read.archives import DEFAULT_MAX_BYTES

    return click.option("--max-unpacked-bytes", type=click.IntRange(min=1), metavar="N",
                        default=DEFAULT_MAX_BYTES, show_default=True,
                        help="Refuse a --src archive that unpacks to more than N bytes (the "
                             "largest release unpacks to ~230 MB).")


def _engine_choice():
    from porting.onnx.engines import ENGINES

    return click.Choice(list(ENGINES))


def _input_size_option():
    from porting.onnx.export import MAX_INPUT_SIZE, MIN_INPUT_SIZE

    return click.option("--input-size", type=click.IntRange(min=MIN_INPUT_SIZE),
                        metavar="PIXELS",
                        help=f"Fixed height and width of the graph's input, at most "
                             f"{MAX_INPUT_SIZE}  [default: the architecture's evaluation size; "
                             "verify needs that size]")


def _preprocess_choice():
    from porting.preprocess import METHODS

    return click.Choice(METHODS)


# --- help texts generated from the eval configs and the tolerance constants ------------------
# A help text may hold {fields} (_HELP_FIELDS), filled when it is shown from the specs and the
# constants (computed only when a help page needs them).

def _number(value: float) -> str:
    """1e-4 as "1e-4" and 0.1 as "0.1"."""
    mantissa, exponent = f"{value:e}".split("e")
    if int(exponent) >= -2:
        return f"{value:g}"
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _by_architecture(text_of, of_spec: bool = False) -> str:
    """``text_of(eval config)`` (or of the spec) for every architecture, those with the same
    text together: "inception_v3, resnet_v2_50: TEXT; resnet_v1_50: OTHER TEXT"."""
    from models.spec import architectures

    groups: dict[str, list[str]] = {}
    for name, spec in architectures().items():
        groups.setdefault(text_of(spec if of_spec else spec.eval), []).append(name)
    return "; ".join(f"{', '.join(names)}: {text}" for text, names in groups.items())


def _end_points(spec) -> str:
    return str(len(spec.end_points))


def _value_range(config) -> str:
    low, high = config.value_range
    return f"[{_number(low)}, {_number(high)}]"


def _eval_inputs(config) -> str:
    return (f"TF-Slim {config.method} preprocessing at {config.input_size} px, values in "
            f"{_value_range(config)}")


def _recipes(timm: bool) -> str:
    from porting.preprocess import TF_SLIM, TIMM, summary

    return _by_architecture(lambda config: summary(config, TIMM if timm else TF_SLIM))


@functools.lru_cache(maxsize=1)
def _bounds() -> dict[str, str]:
    """verify's bounds, from the constants it applies."""
    from fractions import Fraction

    from porting.verify.parity import (FGSM_PIXELS, FLOAT64_RELATIVE_TOLERANCE,
                                       GRADIENT_RELATIVE_TOLERANCE, MAP_RELATIVE_TOLERANCE,
                                       RELATIVE_TOLERANCE)

    return {"logits_bound": _number(RELATIVE_TOLERANCE),
            "map_bound": _number(MAP_RELATIVE_TOLERANCE),
            "float64_bound": _number(FLOAT64_RELATIVE_TOLERANCE),
            "gradient_bound": _number(GRADIENT_RELATIVE_TOLERANCE),
            "fgsm_step": str(Fraction(FGSM_PIXELS).limit_denominator(1000))}


_HELP_FIELDS = {
    "input_ranges": lambda: _by_architecture(_value_range),
    "eval_inputs": lambda: _by_architecture(_eval_inputs),
    "oracles": lambda: _by_architecture(lambda spec: spec.oracle_name, of_spec=True),
    "end_points": lambda: _by_architecture(_end_points, of_spec=True),
    "tf_slim_recipes": lambda: _recipes(timm=False),
    "timm_recipes": lambda: _recipes(timm=True),
    "renamed_scopes": lambda: ", ".join(_renamed_scopes()),
    **{name: (lambda name=name: _bounds()[name]) for name in
       ("logits_bound", "map_bound", "float64_bound", "gradient_bound", "fgsm_step")},
}


def _renamed_scopes() -> list[str]:
    """The root scopes of renamed copies, as the specs list them (``Architecture.aliases``)."""
    from models.spec import architectures

    return [alias for spec in architectures().values() for alias in spec.aliases]


class _Fields(dict):
    def __missing__(self, name: str) -> str:
        return _HELP_FIELDS[name]()


def _filled(text: str) -> str:
    """``text`` with its {fields} filled in (only those it names are computed)."""
    return text.format_map(_Fields())


class _FilledOption(click.Option):
    """An option whose help has {fields}, filled when shown."""

    def get_help_record(self, ctx):
        record = super().get_help_record(ctx)
        return None if record is None else (record[0], _filled(record[1]))


class _FilledCommand(click.Command):
    """A command whose help text has {fields}, filled when its help page is shown (the short
    help in ``port-weights --help`` is its first sentence, which has none)."""

    def format_help_text(self, ctx, formatter):
        template = self.help
        self.help = _filled(template)
        try:
            super().format_help_text(ctx, formatter)
        finally:
            self.help = template


@main.command(cls=_FilledCommand)
@click.option("--src", required=True, metavar="CKPT",
              help="Checkpoint prefix, its .index or .data-* file, a folder holding one checkpoint, "
                   f"a release .tar.gz or .zip, or keras.applications {_keras_applications()} "
                   "weights (.h5 / .weights.h5). With --all: a folder or archive of checkpoints.")
@click.option("--dst", required=True, type=click.Path(), metavar="FILE.pth",
              help="Requested output name; the file is written as NAME-<sha256[:8]>.pth (or "
                   ".safetensors) beside it, with NAME-<sha256[:8]>.json, its manifest. With "
                   "--all: the folder to write into.")
@click.option("--all", "all_", is_flag=True,
              help="Port every checkpoint of the --src folder or archive (a bundle), each to "
                   "DST/<prefix>-<sha256[:8]>.pth (a .ckpt suffix dropped) with its manifest; "
                   "all of them or, if one fails, none. Without it, a --src holding several "
                   "checkpoints is an error naming them.")
@click.option("--num-classes", type=click.Choice(["1000", "1001"]), default="1000", show_default=True,
              help="1000 drops TF-Slim's background class 0 (timm's layout); 1001 keeps TF's outputs.")
@click.option("--no-aux", is_flag=True, help="Leave out the AuxLogits head (for models built without it).")
@click.option("--fold-bn", is_flag=True,
              help="Fold every batch norm into its conv (deploy variant: conv weight + bias).")
@click.option("--ema", is_flag=True,
              help="Use the ExponentialMovingAverage shadow of each variable where the checkpoint has one.")
@click.option("--reader", type=_reader_choice(), default="native", show_default=True,
              help="Checkpoint reader: native (no TensorFlow) or tf (TensorFlow's, to cross-check).")
@click.option("--format", "fmt", type=click.Choice(["pth", "safetensors"]),
              help="Output format; safetensors carries source and options in its header.  "
                   "[default: safetensors if --dst ends in .safetensors, else pth]")
@click.option("--model-card", is_flag=True,
              help="Also write NAME-<sha256[:8]>.md, a model-zoo style card for the file.")
@click.option("--force", is_flag=True, help="Replace an existing output file with different contents.")
@_arch_option("the checkpoint")
@click.option("--allow-nonfinite", is_flag=True,
              help="Port NaN/Inf weights instead of refusing the checkpoint (it names the first).")
@_max_unpacked_option()
@click.option("-v", "--verbose", is_flag=True, help="List every skipped variable.")
@handles_errors
def port(src, dst, all_, num_classes, no_aux, fold_bn, ema, reader, fmt, model_card, force, arch,
         allow_nonfinite, max_unpacked_bytes, verbose):
    """Convert a checkpoint to a hashed, reproducible PyTorch state dict (.pth or .safetensors).

    Every model variable is mapped exactly once and every shape is checked; training leftovers
    (global_step, optimizer slots, EMA shadows) are listed and skipped; anything else is an
    error. The same input and options always give the same bytes. A manifest (NAME-<hash>.json:
    source files and their sha256, options, mapped and skipped variables) is written beside it.

    A checkpoint whose root scope was renamed so that several models fit one TF graph
    ({renamed_scopes}: the aliases in models/<name>/spec.py) ports as its architecture, to the
    same bytes; the manifest records the scope. A bundle of several checkpoints ports with --all:

    \b
      port-weights port --src models.zip --dst out/ --all
    """
    from porting.convert import PortOptions

    options = PortOptions(num_classes=int(num_classes), aux=not no_aux, fold_bn=fold_bn, ema=ema,
                          arch=arch, allow_nonfinite=allow_nonfinite)
    if all_:
        return _port_all(src, dst, options, reader, fmt, model_card, force, max_unpacked_bytes)
    context = click.get_current_context()  # --dst names a file here: click's own check
    click.Path(dir_okay=False).convert(dst, next(p for p in context.command.params
                                                 if p.name == "dst"), context)
    from porting.pipeline import port_checkpoint

    result = port_checkpoint(src, dst, options, reader=reader, force=force, fmt=fmt,
                             card=model_card, max_unpacked_bytes=max_unpacked_bytes)
    source, conversion, written = result.source, result.conversion, result.written
    where = f"{result.archive}: {source.prefix.name}" if result.archive else source.prefix
    click.echo(f"source   {where} ({source.format}, {result.variable_count} variables)")
    click.echo(f"model    {conversion.architecture.title} ({conversion.architecture.name})"
               + _renamed(conversion.renamed_root))
    click.echo(f"mapped   {len(conversion.mapped)} variables -> {len(conversion.state_dict)} "
               f"tensors ({conversion.options.describe()})")  # as applied
    click.echo(f"skipped  {_describe_skipped(conversion.skipped, verbose)}")
    state = "unchanged, already there" if written.unchanged else "written"
    click.echo(f"output   {written.path} ({state})")
    click.echo(f"sha256   {written.sha256}")
    click.echo(f"manifest {result.manifest}")
    if result.card:
        click.echo(f"card     {result.card}")


@main.command()
@click.argument("name", required=False)
@click.option("--src", metavar="CKPT",
              help="A checkpoint (any source `port` takes) instead of a release NAME.")
@click.option("--dst", required=True, type=click.Path(), metavar="DIR",
              help="The folder to write: new, empty, or a release folder written before "
                   "(replaced only with --force unless it holds the same weights).")
@click.option("--pytorch-bin", is_flag=True,
              help="Also write pytorch_model.bin (torch.save's format) beside "
                   "model.safetensors, as timm's push_to_hf_hub does.")
@click.option("--timm-distance/--no-timm-distance", default=None,
              help="Measure how far timm's model of the same keys is from TF's logits on the "
                   "photos (needs torch and timm)  [default: where timm's model does not "
                   "compute TF's logits; without it the card says: not measured]")
@click.option("--ema", is_flag=True,
              help="Use the ExponentialMovingAverage shadow of each variable where the "
                   "checkpoint has one.")
@click.option("--reader", type=_reader_choice(), default="native", show_default=True,
              help="Checkpoint reader: native (no TensorFlow) or tf (TensorFlow's).")
@_arch_option("the checkpoint")
@click.option("--allow-nonfinite", is_flag=True,
              help="Port NaN/Inf weights instead of refusing the checkpoint.")
@_max_unpacked_option()
@click.option("--force", is_flag=True,
              help="Replace a release folder of other weights.")
@handles_errors
def release(name, src, dst, pytorch_bin, timm_distance, ema, reader, arch, allow_nonfinite,
            max_unpacked_bytes, force):
    """Write a folder a model hub hosts as it is: weights, config.json, model card, manifest.

    NAME is a release downloaded by `port-weights fetch NAME` (looked for where fetch puts
    it); --src takes any checkpoint instead. The folder holds model.safetensors (1000
    ImageNet classes, TF-Slim's background class dropped: TF's index = index + 1; no aux
    head), config.json in timm's schema (architecture, num_classes, num_features,
    pretrained_cfg) with a tf_porting block (source and its sha256, options, tool, weights,
    parity, what timm computes), README.md (a model card with front matter) and model.json
    (the port's manifest). The same source and options give the same bytes.

    \b
    Where timm's model computes TF's logits with these weights, config.json names it:
      timm.create_model("local-dir:DIR", pretrained=True)
    loads the folder strictly. Where it does not, config.json names no architecture and the
    card gives the distance measured on the photos (--timm-distance) and how to get TF's
    numbers (tf-porting's model). `port-weights verify --src CKPT --weights
    DIR/model.safetensors` records the parity in model.json; running `release` again carries
    it into config.json and the card.

    Exit 0 when the folder is written (or already holds these bytes), 1 on bad input (nothing
    written).
    """
    from porting.publish import make_release, release_archive

    if (name is None) == (src is None):
        raise click.UsageError("give a release NAME or --src CKPT (one of them)")
    if src == "" or dst == "":
        raise click.UsageError("--src and --dst need a name")
    source = release_archive(name) if name else src
    result = make_release(source, dst, torch_weights=pytorch_bin, ema=ema, arch=arch,
                          reader=reader, allow_nonfinite=allow_nonfinite,
                          max_unpacked_bytes=max_unpacked_bytes, force=force,
                          timm_distance=timm_distance)
    converted, config = result.converted, result.config
    spec = converted.conversion.architecture
    where = f"{converted.archive}: {converted.source.prefix.name}" if converted.archive \
        else converted.source.prefix
    click.echo(f"source   {where} ({converted.source.format}, "
               f"{converted.variable_count} variables)")
    click.echo(f"model    {spec.title} ({spec.name}), "
               f"{converted.conversion.options.describe()}")
    click.echo(f"folder   {result.folder} ({result.state})")
    for record in result.files:
        click.echo(f"  {record.name:<19} {record.bytes:>11,} bytes  sha256 {record.sha256}")
    timm = config.tf_porting.timm
    if config.architecture:
        click.echo(f"timm     architecture {config.architecture}: "
                   f"timm.create_model(\"local-dir:{result.folder}\", pretrained=True)")
    elif timm is None:
        click.echo("timm     none: no timm model has these keys")
    elif timm.distance is None:
        click.echo(f"timm     none: {timm.model} differs from TF (distance not measured)")
    else:
        d = timm.distance
        click.echo(f"timm     none: {timm.model} differs from TF by up to {d.max_abs_diff:.3g} "
                   f"in the logits (bound {d.tolerance:.3g}), top-1 {d.top1_agree}/{d.images}")


@main.command()
@click.argument("name")
@click.option("--dest", type=click.Path(file_okay=False), metavar="DIR",
              help="Folder to download into  [default: checkpoints/ in the working folder, or "
                   "$PORT_WEIGHTS_CHECKPOINTS]")
@click.option("--sha256", "sha256", metavar="HEX",
              help="Expected sha256 of the archive (overrides the registry's).")
@click.option("--url", metavar="URL", help="Download from here instead of the registry's URL.")
@click.option("--pin", is_flag=True,
              help="Record the archive's sha256 in releases.lock (in the default download "
                   "folder, whatever --dest says) so that later fetches and ports check it: "
                   "trust on first use.")
@click.option("--mirror", metavar="URL|DIR",
              help="Take the archive from this base URL (URL/ARCHIVE) or local folder of "
                   "archives instead of the registry's URL  [default: $PORT_WEIGHTS_MIRROR]")
@click.option("--offline", is_flag=True, default=None,
              help="Never touch the network: check an archive already in the folder, or copy "
                   "it from a --mirror folder; anything else is an error naming what is "
                   "missing  [default: $PORT_WEIGHTS_OFFLINE]")
@handles_errors
def fetch(name, dest, sha256, url, pin, mirror, offline):
    """Download release NAME's archive (the releases: models/*/releases.json) and verify it.

    Shows progress on stderr when it is a terminal, retries with backoff, resumes an
    interrupted transfer from NAME.part (when the server's ETag/Last-Modified or a digest
    vouches for it), and checks the sha256 pinned in the registry or in releases.lock (see
    --pin); a mismatch leaves no file behind. The archive can then be ported directly:

    \b
      port-weights --src ARCHIVE --dst OUT.pth

    Python's `porting.load(NAME)` fetches (by the same code), ports and caches in one call.

    Exit 0 when the archive is there and checked, 1 when it cannot be fetched or does not match.
    """
    from pathlib import Path

    from porting.releases import registry
    from porting.releases.fetch import fetch_release, mirror_setting, offline_setting

    release = registry.get_release(name)
    folder = Path(dest) if dest else registry.download_dir()
    got = fetch_release(release, folder, url=url, sha256=sha256, mirror=mirror_setting(mirror),
                        offline=offline_setting(offline))
    fetched = got.fetched
    state = "already there" if fetched.unchanged else "downloaded"
    click.echo(f"archive  {fetched.path} ({state})")
    if fetched.verified:
        click.echo(f"sha256   {fetched.sha256} (verified)")
    elif pin:
        click.echo(f"sha256   {fetched.sha256} (NOT verified against any other source: "
                   "trusted on first use)")
    else:
        click.echo(f"sha256   {fetched.sha256} (NOT verified: no digest is pinned for {name}; "
                   f"check it, then pin it with `port-weights fetch {name} --pin` "
                   f"({registry.lock_path()}) or record it in {release.listed_in})")
    if not fetched.verified and not fetched.unchanged and not fetched.length_checked:
        click.echo("warning  the server sent no length, so a transfer cut short would have gone "
                   "unnoticed: this file may be incomplete")
    if pin:
        lock = registry.pin(release, fetched.sha256, got.origin)
        origin = (f"the archive was already in {folder} (not downloaded now: its bytes are "
                  "whatever that file holds)" if fetched.unchanged else
                  f"the archive as downloaded from {got.origin}")
        click.echo(f"pinned   {fetched.sha256} for {name} in {lock}: {origin}; later fetches "
                   "and ports check it")


@main.command()
@click.argument("src", metavar="CKPT")
@click.option("--no-aux", is_flag=True, help="Plan as `port --no-aux` would (AuxLogits skipped).")
@click.option("--ema", is_flag=True, help="Plan as `port --ema` would (moving averages used).")
@click.option("--reader", type=_reader_choice(), default="native", show_default=True,
              help="Checkpoint reader: native (no TensorFlow) or tf (TensorFlow's).")
@_arch_option("the checkpoint")
@_max_unpacked_option()
@handles_errors
def inspect(src, no_aux, ema, reader, arch, max_unpacked_bytes):
    """List a checkpoint's variables and where each one goes in the PyTorch model.

    Reads the index only. Shows the format, the architecture, every variable (dtype, shape,
    bytes) with its PyTorch layer or the reason it is skipped, and whether `port` would accept
    it. Takes every --src that `port` takes.
    """
    from porting.read.open import open_source

    with open_source(src, reader, arch, max_unpacked_bytes) as opened:
        _inspect(opened, no_aux, ema, arch)


def _port_all(src, dst, options, reader, fmt, card, force, max_unpacked_bytes) -> None:
    """``port --all``: every checkpoint of a bundle, one summary line each (after all of them
    are in place), progress on stderr."""
    from porting.pipeline import port_bundle

    def progress(i, count, checkpoint):
        click.echo(f"porting  {i + 1}/{count} {checkpoint.prefix.name}", err=True)

    entries = port_bundle(src, dst, options, reader=reader, force=force, fmt=fmt or "pth",
                          card=card, max_unpacked_bytes=max_unpacked_bytes, progress=progress)
    for entry in entries:
        state = "unchanged" if entry.written.unchanged else "written"
        click.echo(f"{entry.source.prefix.name}: {entry.architecture.name}"
                   f"{_renamed(entry.root_scope)} ({entry.options.describe()}) -> "
                   f"{entry.written.path} ({state}, sha256 {entry.written.sha256})")


def _renamed(root: str | None) -> str:
    """", renamed root scope <root>" for a renamed copy, "" otherwise."""
    return f", renamed root scope {root}" if root else ""


def _inspect(opened, no_aux: bool, ema: bool, arch: str | None) -> None:
    from porting.convert import PortOptions, architecture_of, plan, plan_variables, root_scope

    def root_scope_or_none(reader, spec):
        try:
            return root_scope(reader, spec)
        except PortError:  # several copies: the verdict below says so
            return None

    checkpoint = opened.reader
    variables = checkpoint.variables()
    options = PortOptions(aux=not no_aux, ema=ema, arch=arch)
    verdict = spec = None
    layers, sources, skipped = [], {}, {}
    try:
        spec = architecture_of(checkpoint, options)
        layers, sources, skipped = plan_variables(checkpoint, options, spec)
    except PortError as err:  # still worth listing what is there
        verdict = str(err)
    else:
        try:  # shapes, dtypes and classes: what `port` checks next, from the index alone
            plan(checkpoint, options)
        except PortError as err:
            verdict = str(err)
    destination = {sources[name]: layer.label(role)
                   for layer in layers for role, name in layer.variables().items()}

    def place(name: str) -> str:
        return destination.get(name) or (f"skipped: {skipped[name]}" if name in skipped else "-")

    def size(info) -> str:  # a string tensor's size is not in the index
        return "-" if info.dtype == object else f"{info.nbytes:,}"

    rows = [(name, "string" if info.dtype == object else str(info.dtype),
             "[" + ", ".join(map(str, info.shape)) + "]", size(info), place(name))
            for name, info in variables.items()]
    header = ("variable", "dtype", "shape", "bytes", "PyTorch destination")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.rjust(w) if i == 3 else cell.ljust(w) for i, (cell, w) in
                 enumerate(zip(row, widths))]
        click.echo("  ".join([*cells, row[-1]]))

    source = checkpoint.source
    total = sum(info.nbytes for info in variables.values() if info.dtype != object)
    where = f"{opened.archive}: {source.prefix.name}" if opened.archive else source.prefix
    click.echo(f"\nsource   {where} ({source.format}, {len(source.files)} files)")
    if spec is not None:
        root = root_scope_or_none(checkpoint, spec)
        click.echo(f"model    {spec.title} ({spec.name})"
                   + _renamed(root if root != spec.tf_root else None))
    click.echo(f"total    {len(variables)} variables, {total:,} bytes ({total / 2**20:.1f} MiB)")
    if verdict is None:
        click.echo(f"mapped   {len(destination)} variables to {len(layers)} PyTorch layers")
        click.echo(f"skipped  {_describe_skipped(skipped, verbose=False)}")
    else:
        click.echo(f"port     would fail: {verdict}")


@main.command(cls=_FilledCommand)
@click.option("--src", metavar="CKPT", type=click.Path(),
              help="Source checkpoint: TF-Slim's graph runs on it (needs TensorFlow).")
@click.option("--weights", metavar="FILE", type=click.Path(dir_okay=False),
              help="Ported .pth/.safetensors file to check (loaded with weights_only=True), or an "
                   "ONNX graph from `port-weights export`.")
@click.option("--goldens", metavar="FILE.h5", type=click.Path(dir_okay=False),
              help="Reference recorded with --record-goldens, instead of --src: no TensorFlow needed.")
@click.option("--images", "images_dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Folder of images to feed both models  [default: scikit-image's 10 photos]")
@click.option("--count", type=click.IntRange(min=1), metavar="N",
              help="Use only the first N images (sorted by name).")
@click.option("--float64", is_flag=True, cls=_FilledOption,
              help="Run both sides in double precision: every end point must agree to "
                   "{float64_bound} relative, which proves the mapping exact (not for --fold-bn "
                   "files).")
@click.option("--gradients", is_flag=True, cls=_FilledOption,
              help="Also compare input gradients of the true-label cross-entropy (bound "
                   "{gradient_bound} in float32, where ReLU kinks make them noisy at ~3%; "
                   "{float64_bound} with --float64) and cross-check FGSM images (eps {fgsm_step} "
                   "of the pixel range) between the frameworks.")
@click.option("--label", type=int, metavar="CLASS",
              help="True label for --gradients, as an index into FILE's classes  [default: TF's top-1]")
@click.option("--ema", is_flag=True, help="The file was ported with --ema: run TF-Slim on the "
                                         "ExponentialMovingAverage shadows too.")
@click.option("--record-goldens", metavar="FILE.h5", type=click.Path(dir_okay=False),
              help="Store the inputs, TF-Slim's end points and the checkpoint's sha256 in HDF5.")
@click.option("--json", "json_path", metavar="REPORT", type=click.Path(dir_okay=False),
              help="Also write the report as JSON.")
@click.option("--engine", "engines", multiple=True, type=_engine_choice(),
              help="For an exported .onnx --weights file: run it in this engine (repeatable)  "
                   "[default: every installed one of onnxruntime, openvino]")
@_arch_option("--src")
@handles_errors
def verify(src, weights, goldens, images_dir, count, float64, gradients, label, ema,
           record_goldens, json_path, engines, arch):
    """Show that a ported file computes what TensorFlow computes, end point by end point.

    The reference is the architecture's TF oracle on --src ({oracles}). For each TF-Slim
    end point its spec names (how many: {end_points}) it prints max |diff|, the
    relative error max |diff| / max(1, max |TF|) and its bound (float32: {logits_bound} for the classifier outputs, {map_bound} for
    feature maps; --float64: {float64_bound}), then names the first end point that diverges:
    that is where a port went wrong. 1000-class files of 1001-class nets are compared with
    TF's logits[:, 1:] (background dropped). The photos are preprocessed by the
    architecture's own recipe ({eval_inputs}).

    \b
    Typical use:
      port-weights verify --src adv_inception_v3.ckpt --weights out/adv_inception_v3-1a2b3c4d.pth
      port-weights verify --src CKPT --weights FILE --float64 --gradients
      port-weights verify --src CKPT --record-goldens goldens.h5 --count 2
      port-weights verify --goldens goldens.h5 --weights FILE      (no TensorFlow needed)

    \b
    An exported graph (--weights NAME.onnx, from `port-weights export`) runs in ONNX Runtime
    and OpenVINO (--engine), each at batch 1 and batch 10, with the same bounds; its ONNX
    metadata says the architecture and classes. Every AveragePool is also checked statically:
    one that counts padding where TF's SAME pool does not fails, named.

    Exit 0 when every check passes, 1 with a one-line verdict when one fails.
    """
    from pathlib import Path

    from porting.files import check_folder, check_target, write_json
    from porting.verify.request import UsageProblem, VerifyRequest
    from porting.verify.run import run

    named = {"--src": src, "--weights": weights, "--goldens": goldens, "--images": images_dir,
             "--record-goldens": record_goldens, "--json": json_path}
    for option, value in named.items():
        if value == "":  # Path("") is ".": an empty name would mean the working folder
            raise click.UsageError(f"{option} '': give a file name")

    def path(value):
        return None if value is None else Path(value)

    request = VerifyRequest(
        weights=path(weights), src=path(src), goldens=path(goldens), images_dir=path(images_dir),
        image_count=count, float64=float64, gradients=gradients, label=label, ema=ema,
        record_goldens=path(record_goldens), arch=arch, engines=engines or None,
        json_report=path(json_path))
    try:
        request.check()
    except UsageProblem as err:
        raise click.UsageError(str(err)) from err
    if json_path:  # refused before any work (the manifest untouched), and again when written
        check_target(Path(json_path), request.inputs())
        check_folder(Path(json_path))
    report = run(request, _open_weights, progress=_progress_line)
    if report.compared:
        click.echo("\n".join(report.table()))
    if report.goldens_written:
        click.echo(f"goldens  {report.goldens_written}")
    if report.manifest:
        outcome = "passed" if report.manifest_parity.passed else "FAILED"
        click.echo(f"manifest {report.manifest} (Logits parity recorded: {outcome})")
    elif report.manifest_skipped:
        click.echo(f"manifest not updated: {report.manifest_skipped}")
    if json_path:
        # atomic (or written through to a stream such as /dev/stdout); PortError naming it
        write_json(Path(json_path), report.to_json(), request.inputs())
    if not report.passed:
        click.echo(report.verdict(), err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(report.verdict())


def _open_weights(request):
    """What ``verify`` checks: an exported graph in its inference engines (no torch), or a
    ported file in PyTorch."""
    if request.onnx:
        from porting.onnx.verify import OnnxSubject

        return OnnxSubject.open(request, engine_logs=_debugging())  # --debug: engines log too
    from porting.verify.torch_runner import TorchSubject

    return TorchSubject.open(request)


def _progress_line(phase: str, done: int, total: int) -> None:
    """One self-overwriting progress line on stderr, only when it is a terminal."""
    if sys.stderr.isatty():
        click.echo(f"\r{phase}: {done}/{total} images", err=True, nl=done == total)


@main.command(cls=_FilledCommand)
@click.option("--weights", required=True, metavar="FILE", type=click.Path(dir_okay=False),
              help="Ported .pth or .safetensors file (plain or --fold-bn, any classes).")
@click.option("--dst", required=True, type=click.Path(dir_okay=False), metavar="NAME.onnx",
              help="Requested output name; the graph is written as NAME-<sha256[:8]>.onnx, "
                   "with NAME-<sha256[:8]>.json, its manifest, beside it.")
@_input_size_option()
@click.option("--opset", type=click.IntRange(13, 20), default=17, show_default=True,
              help="ONNX opset of the graph.")
@click.option("--end-points", is_flag=True,
              help="Also output every TF-Slim end point (NCHW feature maps), so that `verify` "
                   "names the first layer where the graph diverges; for debugging an export.")
@click.option("--force", is_flag=True, help="Replace an existing output file with different contents.")
@handles_errors
def export(weights, dst, input_size, opset, end_points, force):
    """Export a ported file to ONNX for ONNX Runtime, OpenVINO and other engines.

    The graph is the deploy model: every batch norm folded into its conv, no AuxLogits head,
    input `images` [batch, 3, H, W] float32 NCHW, preprocessed as the architecture was
    evaluated ({input_ranges}), with a dynamic batch axis,
    output `Logits` [batch, classes]. Its ONNX metadata (keys tf_porting.*) and the manifest
    beside it record the architecture, the classes (TF-Slim's background class kept at index 0
    or dropped), the preprocessing recipe and the source file's name and sha256. The same
    weights file (name and contents) and options always give the same bytes. Check it against
    TensorFlow with:

    \b
      port-weights verify --src CKPT --weights NAME-<sha256[:8]>.onnx
    """
    from porting.onnx.export import export_weights

    result = export_weights(weights, dst, input_size=input_size, opset=opset,
                            end_points=end_points, force=force)
    meta, written = result.metadata, result.written
    click.echo(f"model    {meta['title']} ({meta['architecture']}), {meta['num_classes']} "
               f"classes, background class {meta['background_class'].split(':')[0]}")
    click.echo(f"graph    {meta['input_shape']} -> {', '.join(result.outputs)}; "
               f"{meta['exporter']}")
    state = "unchanged, already there" if written.unchanged else "written"
    click.echo(f"output   {written.path} ({state})")
    click.echo(f"sha256   {written.sha256}")
    click.echo(f"manifest {result.manifest}")


@main.command()
@click.argument("weights", metavar="FILE", type=click.Path(dir_okay=False))
@click.argument("images", metavar="IMAGE...", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--preprocess", type=_preprocess_choice(), default="tf-slim",
              show_default=True, cls=_FilledOption,
              help="tf-slim: what the TF model was evaluated with ({tf_slim_recipes}); timm: "
                   "timm's eval transform ({timm_recipes}).")
@click.option("--top", type=click.IntRange(1, 20), default=5, show_default=True,
              help="How many classes to print per image.")
@handles_errors
def predict(weights, images, preprocess, top):
    """Print the top ImageNet-1k classes of each IMAGE under a ported FILE.

    Works for 1000- and 1001-class files: TF-Slim's class 0 ("background") is named as such,
    and the rest are the ImageNet-1k classes in their usual order.
    """
    from porting.predict import predict_files

    for name, classes in predict_files(weights, images, preprocess, top):
        click.echo(name)
        for rank, c in enumerate(classes, 1):
            click.echo(f"  {rank}. {c.probability:7.2%}  {c.name}  [{c.label}]")


def _describe_skipped(skipped: dict[str, str], verbose: bool) -> str:
    if not skipped:
        return "nothing"
    if verbose or len(skipped) <= 3:
        return f"{len(skipped)}: " + "; ".join(f"{n} ({why})" for n, why in skipped.items())
    counts = Counter(skipped.values())
    return f"{len(skipped)}: " + "; ".join(f"{c} x {why}" for why, c in counts.most_common()) + \
        " (-v lists them)"




@main.command()
@click.option("--src", metavar="CKPT", type=click.Path(),
              help="The TF checkpoint: its exact port is what the file is measured against, and "
                   "TF's graph runs on it (needs TensorFlow).")
@click.option("--goldens", metavar="FILE.h5", type=click.Path(dir_okay=False),
              help="Or a golden file recorded from it (end points only: it holds no weights).")
@click.option("--foreign", required=True, metavar="FILE", type=click.Path(dir_okay=False),
              help="The foreign weights: a timm / torchvision / pretrainedmodels .pth or "
                   ".safetensors file, or the converter zoo's pickled .npy dict.")
@click.option("--layout", metavar="NAME",
              help="The file's layout (timm, torchvision, cadene, zoo)  [default: the "
                   "registered layout of the architecture whose keys the file holds most of, "
                   "in its shapes]")
@click.option("--images", "images_dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Folder of images to run  [default: scikit-image's 10 photos]")
@click.option("--count", type=click.IntRange(min=1), metavar="N",
              help="Use only the first N images (sorted by name).")
@click.option("--tensors-only", is_flag=True,
              help="Per-tensor distances only: run no images (no TensorFlow needed).")
@click.option("--json", "json_path", metavar="REPORT", type=click.Path(dir_okay=False),
              help="Also write the report as JSON.")
@_arch_option("--src")
@handles_errors
def compare(src, goldens, foreign, layout, images_dir, count, tensors_only, json_path, arch):
    """Measure how far foreign PyTorch weights are from the TF checkpoint's.

    \b
    Per tensor: the file's tensors mapped by its layout onto the exact port of --src (at the
    file's classes: 1000 drops TF's background), with max |diff| of each, the ten worst
    named; tensors the layout expects but the file lacks (missing) or holds in another
    shape, and tensors nothing maps (extra).
    Per end point: the file's weights run in this project's exact network against TF (weight
    differences alone), and, where the file's own network computes differently from TF's
    (timm's and torchvision's Inception v3 count the padding in their average pools), its
    Logits in that network too (architecture differences), with top-1 agreement.

    \b
    Typical use:
      port-weights compare --src adv_inception_v3.ckpt --foreign inception_v3.tf_adv_in1k.safetensors
      port-weights compare --src CKPT --foreign tf_inception_v3.npy --json report.json
      port-weights compare --src CKPT --foreign FILE.pth --tensors-only

    Pickled .npy files are read by an unpickler that builds arrays and plain containers only
    (a pickle that would run code is refused, unrun); .pth files load with weights_only=True.
    Exit 0 when measured (the figures are the result), 1 on bad input.
    """
    from pathlib import Path

    from porting.compare.run import CompareRequest, compare as run_compare
    from porting.files import check_folder, check_target, write_json
    from porting.verify.request import UsageProblem

    for option, value in {"--src": src, "--goldens": goldens, "--foreign": foreign,
                          "--images": images_dir, "--json": json_path}.items():
        if value == "":
            raise click.UsageError(f"{option} '': give a file name")
    if tensors_only and goldens:
        raise click.UsageError("--tensors-only needs --src: goldens hold no weights")
    request = CompareRequest(
        foreign=Path(foreign), src=Path(src) if src else None,
        goldens=Path(goldens) if goldens else None, layout=layout,
        images_dir=Path(images_dir) if images_dir else None, image_count=count, arch=arch,
        end_points=not tensors_only)
    try:
        request.check()
    except UsageProblem as err:
        raise click.UsageError(str(err)) from err
    inputs = tuple(Path(p) for p in (src, goldens, foreign) if p)
    if json_path:
        check_target(Path(json_path), inputs)
        check_folder(Path(json_path))
    comparison = run_compare(request, progress=_progress_line)
    click.echo("\n".join(comparison.table()))
    if json_path:
        write_json(Path(json_path), comparison.to_json(), inputs)
    click.echo(comparison.verdict())



def run() -> None:
    """The console script: ``main``, then a fast exit.

    SIGINT (Ctrl-C), SIGTERM and SIGHUP clean up and exit with 128 + the signal's number, one
    line on stderr. With TensorFlow (``--reader tf``) or torch (verify, predict) loaded, the
    interpreter's own teardown takes ~0.4 s on our 2-core machines. Every file is written,
    fsynced and closed before ``main`` returns, so after flushing stdout and stderr nothing is
    left for it to do.
    """
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, Terminated.handler)  # exit 128 + the signal's number
    try:
        main()
    except SystemExit as done:
        code = done.code
    except (Terminated, KeyboardInterrupt) as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"interrupted by {signal.Signals(signum).name}; outputs left unwritten",
              file=sys.stderr)
        code = 128 + signum
    else:
        code = 0
    if isinstance(code, str):  # sys.exit("message") convention
        print(code, file=sys.stderr)
        code = EXIT_BAD_INPUT
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    run()
