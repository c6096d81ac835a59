"""The JSON manifest beside every ported file (``port``) and every ONNX graph (``export``).

The manifest says where the file came from (files and their sha256), how it was made (tool
version, options), what was mapped and skipped, and what was written. It has no timestamps, so
making the same file twice gives the same manifest. Parity figures are null until a check
against the reference has run (``record_parity``).

``Manifest`` is the typed record (as huggingface_hub's ``CardData``): ``Manifest.to_json`` is the
one writer, ``Manifest.from_json`` / ``read_manifest`` the one reader, which turns a damaged or
foreign file into one ``PortError`` line. Nothing else spells a key of the file: the JSON keys
are the records' field names, in field order.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from porting.errors import PortError, first_line
from porting.files import Outputs, read_input, sha256_file
from porting.releases.registry import Release, pinned_sha256
from porting.write.card import model_card
from porting.write.hashed import exists_with_other_contents

if TYPE_CHECKING:  # porting.verify.parity imports torch, which a port does without
    from porting.verify.parity import Parity

MANIFEST_VERSION = 1
TOOL_NAME = "tf-porting"
# The most of a manifest or card that is read (they list variables: tens of KB); a larger file
# at a sidecar's name is not one this tool wrote.
SIDECAR_BYTES = 16 << 20


def tool_version() -> str:
    return version(TOOL_NAME)


def sidecar(output: Path, suffix: str) -> Path:
    """``out/name-1a2b3c4d.pth`` -> ``out/name-1a2b3c4d.json`` (or ``.md``)."""
    return output.with_suffix(suffix)


# --- the records -----------------------------------------------------------------------------
# Field order is the file's key order. A field with ``_ABSENT`` metadata may be missing from a
# file (written before the field existed) and reads as that value. An ``_OPTIONAL`` field is
# written only when it is not None (and reads as None when missing): a file without what it
# records keeps the bytes it had before the field existed.

_ABSENT = "absent"
_OMITTED = "omitted when None"
_OPTIONAL = {_ABSENT: None, _OMITTED: True}


@dataclass(frozen=True, kw_only=True)
class ToolRecord:
    name: str = TOOL_NAME
    version: str


@dataclass(frozen=True, kw_only=True)
class FileRecord:
    name: str   # relative to the folder of the checkpoint (or of the archive)
    bytes: int
    sha256: str

    @classmethod
    def of(cls, path: Path, base: Path) -> FileRecord:
        return cls(name=str(path.relative_to(base)), bytes=path.stat().st_size,
                   sha256=sha256_file(path))


@dataclass(frozen=True, kw_only=True)
class SourceRecord:
    """What ``port`` read: the checkpoint as given, and the release its name matched."""
    given: str
    format: str
    num_classes: int            # of the checkpoint's classifier
    checkpoint: str
    release: str | None
    # the content is the release: the archive's sha256 is the one pinned for it
    release_verified: bool = field(metadata={_ABSENT: False})
    url: str | None
    archive: FileRecord | None
    files: tuple[FileRecord, ...]
    # the root scope of a renamed copy (``AdvInceptionV3``), whose variables are the
    # architecture's under another root; absent for a checkpoint under the architecture's own
    root_scope: str | None = field(default=None, metadata=_OPTIONAL)


@dataclass(frozen=True, kw_only=True)
class ExportSourceRecord:
    """What ``export`` read: the ported weights, and what they were ported from (the source
    record of their own manifest, when it describes them)."""
    weights: str
    bytes: int
    sha256: str
    ported_from: SourceRecord | None


@dataclass(frozen=True, kw_only=True)
class OutputRecord:
    """The ported weights file; ``header_metadata`` is a safetensors file's header metadata."""
    file: str
    format: str
    bytes: int
    sha256: str
    header_metadata: dict[str, str] | None


@dataclass(frozen=True, kw_only=True)
class GraphOutputRecord:
    """The ONNX graph; ``onnx_metadata`` its metadata_props."""
    file: str
    format: str
    bytes: int
    sha256: str
    onnx_metadata: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class PortOptionsRecord:
    architecture: str
    num_classes: int
    aux: bool
    fold_bn: bool
    ema: bool
    reader: str


@dataclass(frozen=True, kw_only=True)
class ExportOptionsRecord:
    architecture: str
    num_classes: int
    aux: bool = False      # the graph never has the aux head
    fold_bn: bool = True   # and always folds batch norm
    input_size: int
    dynamic_batch: bool = True
    opset: int
    outputs: tuple[str, ...]
    end_points: bool
    exporter: str
    onnx: str              # the onnx package's version


@dataclass(frozen=True, kw_only=True)
class VariablesRecord:
    in_source: int
    mapped_count: int
    skipped_count: int
    mapped: dict[str, str]   # stored variable name -> target
    skipped: dict[str, str]  # variable name -> why

    @classmethod
    def of(cls, in_source: int, mapped: dict[str, str], skipped: dict[str, str]) -> VariablesRecord:
        return cls(in_source=in_source, mapped_count=len(mapped), skipped_count=len(skipped),
                   mapped=mapped, skipped=skipped)


@dataclass(frozen=True, kw_only=True)
class ParityRecord:
    """A Logits parity check of the file, passed or failed, and what it was checked against."""
    reference: str
    images: int
    max_abs_diff: float
    tolerance: float
    top1_agree: int | None
    top5_agree: int | None
    passed: bool

    @classmethod
    def of(cls, parity: Parity, reference: str) -> ParityRecord:
        return cls(reference=reference, images=parity.images, max_abs_diff=parity.max_abs_diff,
                   tolerance=parity.tolerance, top1_agree=parity.top1_agree,
                   top5_agree=parity.top5_agree, passed=parity.passed)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A port's manifest (``SourceRecord``, ``OutputRecord``, ``PortOptionsRecord``,
    ``VariablesRecord``) or an export's (``ExportSourceRecord``, ``GraphOutputRecord``,
    ``ExportOptionsRecord``, no variables)."""
    manifest_version: int = MANIFEST_VERSION
    tool: ToolRecord
    source: SourceRecord | ExportSourceRecord
    output: OutputRecord | GraphOutputRecord
    options: PortOptionsRecord | ExportOptionsRecord
    variables: VariablesRecord | None  # a port's; an export's file has no such key
    parity: ParityRecord | None = None

    @property
    def kind(self) -> str:
        return "port" if isinstance(self.source, SourceRecord) else "export"

    def with_parity(self, parity: ParityRecord | None) -> Manifest:
        return dataclasses.replace(self, parity=parity)

    def to_json(self) -> bytes:
        """The file's bytes: keys in field order, indent 2, a final newline."""
        document = plain_record(self)
        if self.variables is None:
            del document["variables"]
        return (json.dumps(document, indent=2) + "\n").encode("utf8")

    @classmethod
    def from_json(cls, data: bytes | str, path: Path | str) -> Manifest:
        """The manifest in ``data`` (the contents of ``path``); ManifestError, one line
        naming ``path``, if it is not JSON or not a manifest this tool writes."""
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
            raise ManifestError(path, f"not JSON: {first_line(err)}") from err
        try:
            return _read_manifest(document)
        except _Unreadable as err:
            raise ManifestError(path, f"not a {TOOL_NAME} manifest: {err}") from err


class ManifestError(PortError):
    """A manifest that cannot be read: ``PATH: REASON``."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.reason = reason


def read_manifest(path: Path) -> Manifest:
    """``Manifest.from_json`` of the file at ``path`` (a regular file of at most
    ``SIDECAR_BYTES``: ``porting.files.read_input``); ManifestError if it cannot be read."""
    try:
        data = read_input(path, SIDECAR_BYTES, "manifest")
    except PortError as err:
        raise ManifestError(path, "cannot read: " + str(err).removeprefix(f"{path}: ")) from err
    return Manifest.from_json(data, path)


# --- writer and reader -----------------------------------------------------------------------

def plain_record(record):
    """A record (a manifest's, a release folder's config) as JSON values, keys in field order
    (``dataclasses.asdict``; tuples as lists; an omittable field left out when None)."""
    if dataclasses.is_dataclass(record):
        return {f.name: plain_record(getattr(record, f.name)) for f in dataclasses.fields(record)
                if not (f.metadata.get(_OMITTED) and getattr(record, f.name) is None)}
    if isinstance(record, (list, tuple)):
        return [plain_record(item) for item in record]
    if isinstance(record, dict):
        return {key: plain_record(value) for key, value in record.items()}
    return record


class _Unreadable(Exception):
    """Where a manifest document departs from the records, e.g. "source.files[0].sha256: missing"."""


_KINDS = {  # kind -> the record of each part of the file that depends on it
    "port": {"source": SourceRecord, "output": OutputRecord, "options": PortOptionsRecord,
             "variables": VariablesRecord},
    "export": {"source": ExportSourceRecord, "output": GraphOutputRecord,
               "options": ExportOptionsRecord, "variables": type(None)},
}


def _read_manifest(document) -> Manifest:
    if not isinstance(document, dict):
        raise _Unreadable(f"a JSON {type(document).__name__}, not an object")
    if document.get("manifest_version") != MANIFEST_VERSION:
        raise _Unreadable(f"manifest_version {document.get('manifest_version')!r}, "
                          f"not {MANIFEST_VERSION}")
    kind = "port" if "variables" in document else "export"
    manifest = _read_record(Manifest, document, "", parts=_KINDS[kind])
    if manifest.tool.name != TOOL_NAME:
        raise _Unreadable(f"tool.name {manifest.tool.name!r}")
    if manifest.variables is not None and (
            manifest.variables.mapped_count != len(manifest.variables.mapped)
            or manifest.variables.skipped_count != len(manifest.variables.skipped)):
        raise _Unreadable("variables: counts differ from the lists")
    return manifest


def _read_record(cls, value, where: str, parts: dict | None = None):
    if not isinstance(value, dict):
        raise _Unreadable(f"{where or 'the file'}: {_json_type(value)}, not an object")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in value if key not in names]
    if unknown:
        raise _Unreadable(f"{where}{'.' if where else ''}{unknown[0]}: unknown key")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        at = f"{where}.{f.name}" if where else f.name
        kind = (parts or {}).get(f.name, hints[f.name])
        if f.name not in value:
            if _ABSENT in f.metadata:
                kwargs[f.name] = f.metadata[_ABSENT]
                continue
            if kind is type(None):
                kwargs[f.name] = None
                continue
            raise _Unreadable(f"{at}: missing")
        kwargs[f.name] = _read_value(kind, value[f.name], at)
    return cls(**kwargs)


def _read_value(kind, value, at: str):
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _Unreadable(f"{at}: null")
        (kind,) = [arg for arg in args if arg is not type(None)]
        return _read_value(kind, value, at)
    if kind is type(None):
        raise _Unreadable(f"{at}: unexpected")
    if dataclasses.is_dataclass(kind):
        return _read_record(kind, value, at)
    if origin is tuple:
        if not isinstance(value, list):
            raise _Unreadable(f"{at}: {_json_type(value)}, not a list")
        return tuple(_read_value(args[0], item, f"{at}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _Unreadable(f"{at}: {_json_type(value)}, not an object")
        for key, item in value.items():
            _read_value(args[1], item, f"{at}[{key!r}]")
        return value
    # JSON true is no number, and an integer is a fine float (json writes 0.0 as "0.0")
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, kind) and not isinstance(value, bool) if kind is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
          isinstance(value, kind))
    if not ok:
        raise _Unreadable(f"{at}: {_json_type(value)}, not {_JSON_NAMES[kind]}")
    return value


_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _json_type(value) -> str:
    return ("null" if value is None else "true or false" if isinstance(value, bool) else
            "a string" if isinstance(value, str) else "a number" if isinstance(value, (int, float))
            else "a list" if isinstance(value, list) else "an object")


# --- a port's source -------------------------------------------------------------------------

def hash_source_files(checkpoint_source, archive: Path | None
                      ) -> tuple[FileRecord | None, tuple[FileRecord, ...]]:
    """(archive, files): names, sizes and sha256 of the source files; call it while they exist
    (archives are unpacked only for the duration of a port)."""
    base = checkpoint_source.files[0].parent
    return (FileRecord.of(archive, archive.parent) if archive else None,
            tuple(FileRecord.of(path, base) for path in checkpoint_source.files))


def source_record(given: str | Path, checkpoint_source,
                  hashed_files: tuple[FileRecord | None, tuple[FileRecord, ...]],
                  release: Release | None, num_classes: int,
                  root_scope: str | None = None, pins: Path | None = None) -> SourceRecord:
    """The source as the manifest records it; ``hashed_files`` from ``hash_source_files``.

    ``release`` is what the file's name matched; ``release_verified`` says whether its content
    is that release: true only when the archive's sha256 is the one pinned for the release (in
    the registry or releases.lock). An unpacked checkpoint cannot be checked against the
    archive's digest, so it is never verified. ``root_scope`` is the checkpoint's root scope
    where it is a renamed copy (``AdvInceptionV3``). ``pins``: the folder of the releases.lock to
    consult (``registry.lock_path``).
    """
    archive, files = hashed_files
    expected = pinned_sha256(release.name, pins) if release and archive else None
    return SourceRecord(
        given=str(given), format=checkpoint_source.format, num_classes=num_classes,
        checkpoint=checkpoint_source.prefix.name, release=release.name if release else None,
        release_verified=bool(expected) and archive.sha256 == expected,
        url=release.url if release else None, archive=archive, files=files,
        root_scope=root_scope)


def ported_from(weights: Path, sha256: str) -> SourceRecord | None:
    """The source record of the manifest beside ``weights``, if it is a port's manifest of the
    file with ``sha256``; None otherwise (no manifest, another file's, or not readable)."""
    path = sidecar(weights, ".json")
    if not path.is_file():
        return None
    try:
        recorded = read_manifest(path)
    except ManifestError:
        return None
    if recorded.kind != "port" or recorded.output.sha256 != sha256:
        return None
    return recorded.source


# --- staging and updating --------------------------------------------------------------------

def stage_sidecar(outputs: Outputs, path: Path, content: Manifest | str, sha256: str,
                  force: bool):
    """Stage a manifest or model card (str) of the weights with ``sha256``. An existing sidecar
    of the same weights is refreshed, the parity ``verify`` recorded in a manifest kept; any
    other file there (edited, or of other weights) is replaced only with ``force``, the
    weights' rule. A derived name: a link, stream or device there is refused
    (``porting.files.check_derived``). Returns what was staged."""
    outputs.check(path, derived=True)
    payload = _payload(path, content)
    existing = _existing_sidecar(path)
    same_weights = False
    if existing is not None:
        if isinstance(content, Manifest):
            try:
                recorded = Manifest.from_json(existing, path)
            except ManifestError:
                recorded = None
            same_weights = recorded is not None and recorded.output.sha256 == sha256
            if same_weights and recorded.parity:
                content = content.with_parity(recorded.parity)
                payload = _payload(path, content)
        else:
            same_weights = f"sha256 `{sha256}`".encode() in existing
    if existing is not None:
        if existing == payload:
            return content
        if not (force or same_weights):
            raise exists_with_other_contents(path)
    outputs.add(path, payload, derived=True)
    return content


def _payload(path: Path, content: Manifest | str) -> bytes:
    """The bytes of a sidecar: a manifest's JSON (names not UTF-8 escaped, as JSON can), or a
    card's UTF-8 text, which cannot hold a file name that is not UTF-8: PortError then."""
    if isinstance(content, Manifest):
        return content.to_json()
    try:
        return content.encode("utf8")
    except UnicodeEncodeError as err:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")  # its bytes, escaped
        raise PortError(f"{shown}: a model card is UTF-8 text and cannot name a "
                        "file whose name is not UTF-8; give a UTF-8 name or leave out the "
                        "card") from err


def _existing_sidecar(path: Path) -> bytes | None:
    """What a regular file at a sidecar's name holds (None: nothing there); a file larger than
    any sidecar reads as other contents (``b""``): replaced only with --force."""
    if not path.exists():
        return None
    if path.stat().st_size > SIDECAR_BYTES:
        return b""
    return read_input(path, SIDECAR_BYTES, "manifest" if path.suffix == ".json" else "card")


def record_parity(manifest_path: Path, parity: Parity, reference: str,
                  card_path: Path | None = None) -> Manifest:
    """Add the figures of a passed or failed parity check to a manifest (and refresh the model
    card at ``card_path``, both or neither); return the manifest."""
    return _record_parity(manifest_path, read_manifest(manifest_path),
                          ParityRecord.of(parity, reference), card_path)


def _record_parity(manifest_path: Path, manifest: Manifest, parity: ParityRecord,
                   card_path: Path | None) -> Manifest:
    manifest = manifest.with_parity(parity)
    with Outputs() as outputs:
        outputs.add(manifest_path, manifest.to_json(), derived=True)
        if card_path is not None:
            outputs.add(card_path, _payload(card_path, model_card(manifest)), derived=True)
        outputs.commit()
    return manifest


def record_manifest_parity(weights: Path, parity: Parity,
                           reference: str) -> tuple[Path | None, str | None]:
    """Record a Logits parity, passed or failed, in the manifest ``port`` (or ``export``) wrote
    beside ``weights`` (and refresh the model card of a port, if there is one).

    Returns (manifest updated, None), or (None, why a file there was left alone), or
    (None, None) when there is no manifest. A manifest that describes another file (the
    weights were replaced or edited after porting) is left alone."""
    path = sidecar(weights, ".json")
    if not path.is_file():
        return None, None
    try:
        manifest = read_manifest(path)
    except ManifestError as err:
        return None, f"{path} is not a readable manifest ({err.reason})"
    described = manifest.output.sha256
    if described != sha256_file(weights):
        return None, f"{path} describes another file (sha256 {described[:12]}...)"
    card = sidecar(weights, ".md")
    refresh = card if manifest.kind == "port" and card.is_file() else None
    try:
        _record_parity(path, manifest, ParityRecord.of(parity, reference), refresh)
    except PortError as err:  # e.g. read-only: the report stands, the manifest is unchanged
        return None, str(err)
    return path, None
