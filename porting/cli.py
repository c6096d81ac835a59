"""``port-weights``: the command line. One command per verb; ``port`` is the default.

Exit codes: 0 success, 1 bad input or a failed check (one line on stderr), 2 usage error,
70 internal error (a bug: rerun with --debug and report the traceback).
"""
from __future__ import annotations

import functools
import sys
from collections import Counter

import click

from porting.errors import PortError

EXIT_BAD_INPUT = 1
EXIT_INTERNAL = 70


def handles_errors(command):
    """Give a command ``--debug`` and turn its failures into one line on stderr."""

    @click.option("--debug", is_flag=True, help="Show the full traceback when something fails.")
    @functools.wraps(command)
    def wrapper(*args, debug: bool, **kwargs):
        try:
            return command(*args, **kwargs)
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
    """``port-weights --src X --dst Y`` means ``port-weights port --src X --dst Y``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["port", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultToPort, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tf-porting")
def main():
    """Port TF-Slim Inception v3 checkpoints (adv_inception_v3 and family) to PyTorch.

    \b
    Typical use:
      port-weights --src adv_inception_v3.ckpt --dst out/adv_inception_v3.pth
    writes out/adv_inception_v3-<sha256[:8]>.pth (torch.hub's check_hash naming) and prints
    its path and full sha256. Run `port-weights COMMAND --help` for each command.

    Exit codes: 0 ok, 1 bad input or failed check, 2 usage error, 70 internal error.
    """


def _reader_choice():
    from porting.readers import READERS

    return click.Choice(sorted(READERS))


@main.command()
@click.option("--src", required=True, metavar="CKPT",
              help="Checkpoint prefix, its .index or .data-* file, or a folder holding one checkpoint.")
@click.option("--dst", required=True, type=click.Path(dir_okay=False), metavar="FILE.pth",
              help="Requested output name; the file is written as NAME-<sha256[:8]>.pth beside it.")
@click.option("--num-classes", type=click.Choice(["1000", "1001"]), default="1000", show_default=True,
              help="1000 drops TF-Slim's background class 0 (timm's layout); 1001 keeps TF's outputs.")
@click.option("--no-aux", is_flag=True, help="Leave out the AuxLogits head (for models built without it).")
@click.option("--fold-bn", is_flag=True,
              help="Fold every batch norm into its conv (deploy variant: conv weight + bias).")
@click.option("--ema", is_flag=True,
              help="Use the ExponentialMovingAverage shadow of each variable where the checkpoint has one.")
@click.option("--reader", type=_reader_choice(), default="tf", show_default=True,
              help="Checkpoint reader implementation.")
@click.option("--force", is_flag=True, help="Replace an existing output file with different contents.")
@click.option("-v", "--verbose", is_flag=True, help="List every skipped variable.")
@handles_errors
def port(src, dst, num_classes, no_aux, fold_bn, ema, reader, force, verbose):
    """Convert a checkpoint to a hashed, reproducible PyTorch state dict (.pth).

    Every model variable is mapped exactly once and every shape is checked; training leftovers
    (global_step, optimizer slots, EMA shadows) are listed and skipped; anything else is an
    error. The same input and options always give the same bytes.
    """
    from porting.convert import PortOptions
    from porting.pipeline import port_checkpoint

    options = PortOptions(num_classes=int(num_classes), aux=not no_aux, fold_bn=fold_bn, ema=ema)
    result = port_checkpoint(src, dst, options, reader=reader, force=force)
    source, conversion, written = result.source, result.conversion, result.written
    click.echo(f"source   {source.prefix} ({source.format}, {result.variable_count} variables)")
    click.echo(f"mapped   {len(conversion.mapped)} variables -> {len(conversion.state_dict)} "
               f"tensors ({options.describe()})")
    click.echo(f"skipped  {_describe_skipped(conversion.skipped, verbose)}")
    state = "unchanged, already there" if written.unchanged else "written"
    click.echo(f"output   {written.path} ({state})")
    click.echo(f"sha256   {written.sha256}")


def _describe_skipped(skipped: dict[str, str], verbose: bool) -> str:
    if not skipped:
        return "nothing"
    if verbose or len(skipped) <= 3:
        return f"{len(skipped)}: " + "; ".join(f"{n} ({why})" for n, why in skipped.items())
    counts = Counter(skipped.values())
    return f"{len(skipped)}: " + "; ".join(f"{c} x {why}" for why, c in counts.most_common()) + \
        " (-v lists them)"


if __name__ == "__main__":
    main()
