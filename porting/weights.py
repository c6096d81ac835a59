"""A ported weights file back into its model, with one clear error line for a bad file."""
from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from models.loading import model_for_state_dict
from models.spec import UnknownArchitecture
from porting.errors import PortError
from porting.files import check_input, open_input
from porting.read.archives import check_stored_zip


class DigestMismatch(PortError):
    """The weights file is not the one expected: its sha256 differs."""


def _sha256_of(fd: int) -> str:
    """The sha256 of the open file ``fd``, read with ``pread`` (its offset is left alone)."""
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, 1 << 20, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def _check_digest(found: str, path: Path, sha256: str) -> None:
    if found != sha256:
        raise DigestMismatch(f"{path}: sha256 is {found}, expected {sha256}")


def load_ported(path: str | Path, sha256: str | None = None) -> nn.Module:
    """The eval-mode model (architecture, classes, aux head, folding) the file's state dict fits.

    ``.pth`` files load with ``weights_only=True`` (a weights file must never run code on load);
    ``.safetensors`` files with safetensors. Either must be a regular file (``porting.files``'
    input rule: a pipe or a device is refused, not read). With ``sha256``, the digest of the
    descriptor that is loaded (nothing can swap the file between the check and the load) is
    taken beside the load, and the file counts only if it matches: ``DigestMismatch`` if it
    differs (also where the file would not load at all).
    """
    from safetensors.torch import load as load_bytes, load_file

    path = Path(path)
    try:
        with warnings.catch_warnings():  # the one error line below says what went wrong
            warnings.simplefilter("ignore")
            if path.suffix == ".safetensors" and not sha256:
                state_dict = load_file(check_input(path, "weights file"))
            else:
                with open_input(path, "weights file") as file, \
                        ThreadPoolExecutor(max_workers=1) as pool:
                    # the digest of the descriptor that is loaded, taken beside the load
                    # (hashlib and reads release the GIL); the file counts only if it matches
                    hashing = pool.submit(_sha256_of, file.fileno()) if sha256 else None
                    try:
                        check_stored_zip(path, file)  # before torch.load inflates anything
                        if path.suffix == ".safetensors":
                            state_dict = load_bytes(file.read())
                        else:
                            state_dict = torch.load(file, map_location="cpu",
                                                    weights_only=True)
                    finally:  # a mismatch is the error to report, whether or not it loaded
                        if hashing is not None:
                            _check_digest(hashing.result(), path, sha256)
    except PortError:
        raise
    except Exception as err:  # torch and safetensors raise many kinds for a damaged file
        raise PortError(f"{path}: not a PyTorch weights file ({type(err).__name__})") from err
    if not isinstance(state_dict, dict) or not all(
            isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise PortError(f"{path}: not a state dict of tensors")
    try:
        return model_for_state_dict(state_dict)
    except UnknownArchitecture as err:
        raise PortError(f"{path}: {err}") from err
    except RuntimeError as err:  # load_state_dict: missing, unexpected or misshapen keys
        lines = str(err).splitlines()  # "Error(s) in loading state_dict ...", then the details
        raise PortError(f"{path}: does not fit its architecture: {lines[-1].strip()}") from err
