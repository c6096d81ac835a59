"""A release is identified by its content, not its name: the manifest's ``release_verified`` and
the model card's "the official <release>" need the archive's sha256 to match the digest pinned
for the release (its folder's releases.json, else the local releases.lock that ``fetch --pin``
writes).

Fast: the manifest's source record and the card are built from small files and a stand-in for
the opened checkpoint, the way ``porting.pipeline`` calls them (no TensorFlow, no port)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from porting.releases import registry
from porting.write.card import model_card
from porting.write.manifest import (Manifest, OutputRecord, PortOptionsRecord, SourceRecord,
                                    ToolRecord, VariablesRecord, hash_source_files, source_record)

RELEASE = "adv_inception_v3"


@dataclasses.dataclass
class _Source:  # what source_record and hash_source_files read of a CheckpointSource
    format: str
    prefix: Path
    files: list[Path]


@pytest.fixture(autouse=True)
def lock(tmp_path_factory, monkeypatch) -> Path:
    folder = tmp_path_factory.mktemp("downloads") / "checkpoints"
    monkeypatch.setattr(registry, "download_dir", lambda: folder, raising=False)
    return folder / "releases.lock"


@pytest.fixture
def named_like_the_release(tmp_path):
    """(archive, unpacked checkpoint source): files merely named like adv_inception_v3's."""
    release = registry.get_release(RELEASE)
    archive = tmp_path / release.archive
    archive.write_bytes(b"not the published archive")
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    files = [unpacked / f"{release.checkpoint}.index",
             unpacked / f"{release.checkpoint}.data-00000-of-00001"]
    for path in files:
        path.write_bytes(path.name.encode())
    return archive, _Source("V2", unpacked / release.checkpoint, files)


def _pin(lock: Path, digest: str, archive: str | None = None) -> None:
    lock.parent.mkdir(parents=True, exist_ok=True)
    name = archive or registry.get_release(RELEASE).archive
    lock.write_text(json.dumps({RELEASE: {"archive": name, "sha256": digest,
                                          "url": "http://mirror/x"}}))


def _record(given: Path, source: _Source, archive: Path | None, release=RELEASE) -> SourceRecord:
    found = registry.get_release(release) if release else None
    return source_record(given, source, hash_source_files(source, archive), found, 1001)


def _manifest(source_record_: SourceRecord) -> Manifest:
    return Manifest(
        tool=ToolRecord(version="0"), source=source_record_,
        output=OutputRecord(file="m-12345678.pth", format="pth", bytes=0, sha256="0" * 64,
                            header_metadata=None),
        options=PortOptionsRecord(architecture="inception_v3", num_classes=1000, aux=True,
                                  fold_bn=False, ema=False, reader="native"),
        variables=VariablesRecord.of(0, {}, {}))


def _card(source_record_: SourceRecord) -> str:
    return model_card(_manifest(source_record_))


def _origin(card: str) -> str:
    (line,) = [line for line in card.splitlines() if line.startswith("| Source |")]
    return line


def test_archive_matching_the_pinned_digest_is_the_official_release(named_like_the_release,
                                                                     lock):
    archive, source = named_like_the_release
    _pin(lock, hashlib.sha256(archive.read_bytes()).hexdigest())
    record = _record(archive, source, archive)
    assert record.release == RELEASE and record.release_verified is True
    origin = _origin(_card(record))
    assert f"the official {RELEASE}" in origin and "not verified" not in origin
    assert "http://download.tensorflow.org/models/adv_inception_v3_2017_08_18.tar.gz" in origin


def test_registry_digest_counts_as_the_pin(named_like_the_release, monkeypatch):
    archive, source = named_like_the_release
    release = dataclasses.replace(registry.get_release(RELEASE),
                                  sha256=hashlib.sha256(archive.read_bytes()).hexdigest())
    monkeypatch.setattr(registry, "load_registry", lambda *a: {RELEASE: release})
    assert _record(archive, source, archive).release_verified is True


@pytest.mark.parametrize("pin", ["none", "other digest", "other archive name"])
def test_archive_merely_named_like_the_release_is_not_the_official_one(named_like_the_release,
                                                                       lock, pin):
    archive, source = named_like_the_release
    if pin == "other digest":
        _pin(lock, "a" * 64)
    elif pin == "other archive name":  # a pin of some other file, whatever its digest
        _pin(lock, hashlib.sha256(archive.read_bytes()).hexdigest(), archive="renamed.tar.gz")
    record = _record(archive, source, archive)
    assert record.release == RELEASE and record.release_verified is False
    origin = _origin(_card(record))
    assert "the official" not in origin
    assert f"a checkpoint named like {RELEASE} (digest not verified)" in origin


def test_unpacked_checkpoint_is_never_verified(named_like_the_release, lock):
    """Only the archive's digest is pinned: an unpacked checkpoint has nothing to match it."""
    archive, source = named_like_the_release
    _pin(lock, hashlib.sha256(archive.read_bytes()).hexdigest())
    record = _record(source.prefix, source, None)
    assert record.release == RELEASE and record.archive is None
    assert record.release_verified is False
    origin = _origin(_card(record))
    assert "the official" not in origin and "(digest not verified)" in origin
    assert f"`{source.prefix.name}`" in origin


def test_no_release_is_not_verified_and_card_says_local_file(named_like_the_release):
    archive, source = named_like_the_release
    record = _record(archive, source, archive, release=None)
    assert record.release is None and record.release_verified is False
    assert "(local file, V2)" in _origin(_card(record))


def test_manifest_without_the_field_reads_as_unverified(named_like_the_release, lock):
    """A manifest written before release_verified existed names no official release."""
    archive, source = named_like_the_release
    _pin(lock, hashlib.sha256(archive.read_bytes()).hexdigest())
    document = json.loads(_manifest(_record(archive, source, archive)).to_json())
    assert document["source"].pop("release_verified") is True
    read = Manifest.from_json(json.dumps(document), "old.json")
    assert read.source.release_verified is False
    assert "(digest not verified)" in _origin(model_card(read))
