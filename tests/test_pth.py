"""porting.write.pth writes what torch.save writes, without torch; torch reads it back exactly."""
import io
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch

from porting.convert import PortOptions, convert
from porting.write.pth import save_state_dict
from porting.read.open import open_reader

SERIALIZATION_ID = "archive/.data/serialization_id"


def _ours(state_dict) -> bytes:
    buffer = io.BytesIO()
    save_state_dict(state_dict, buffer)
    return buffer.getvalue()


def _torch_save(state_dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(OrderedDict((k, torch.from_numpy(v)) for k, v in state_dict.items()), buffer)
    return buffer.getvalue()


def _without_name_hash(data: bytes) -> bytes:
    """The file with the one part torch derives from libstdc++'s std::hash masked: the first
    20 digits of the serialization id, and that record's CRC-32 in its data descriptor and in
    its central directory entry."""
    out = bytearray(data)
    archive = zipfile.ZipFile(io.BytesIO(data))
    info = archive.getinfo(SERIALIZATION_ID)
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    out[start:start + 20] = b"0" * 20
    out[start + info.file_size + 4:start + info.file_size + 8] = bytes(4)  # data descriptor
    entry = archive.start_dir
    while data[entry + 46:entry + 46 + len(SERIALIZATION_ID)] != SERIALIZATION_ID.encode():
        entry += 46 + sum(struct.unpack_from("<HHH", data, entry + 28))
    out[entry + 16:entry + 20] = bytes(4)
    return bytes(out)


def _same_as_torch_save(state_dict) -> None:
    ours, reference = _ours(state_dict), _torch_save(state_dict)
    assert len(ours) == len(reference)
    assert _without_name_hash(ours) == _without_name_hash(reference)
    ids = [zipfile.ZipFile(io.BytesIO(d)).read(SERIALIZATION_ID) for d in (ours, reference)]
    assert len(ids[0]) == 40 and ids[0][20:] == ids[1][20:]  # the combined CRCs agree


@pytest.mark.parametrize("variant", [PortOptions(num_classes=1001), PortOptions(),
                                     PortOptions(fold_bn=True), PortOptions(aux=False)],
                         ids=["1001", "1000", "fold-bn", "no-aux"])
def test_ported_state_dicts_are_written_as_torch_save_writes_them(synthetic_ckpt, variant):
    _same_as_torch_save(convert(open_reader(synthetic_ckpt), variant).state_dict)


@pytest.mark.parametrize("count", [1, 2, 1001, 2002])  # pickle's SETITEM, SETITEMS, 1000-batches
def test_small_and_large_dicts_of_every_stored_dtype(count):
    rng = np.random.default_rng(count)
    dtypes, shapes = ("<f4", "<f8", "<i8"), [(), (3,), (1, 2, 3, 4, 5)]
    state_dict = OrderedDict(
        (f"t{i}.é", rng.normal(size=shapes[i % 3]).astype(dtypes[i % 2 + (i % 5 == 0)]))
        for i in range(count - 1))
    state_dict["big"] = np.ones((2, 70000), "<f4")  # numel and strides past 16 bits
    _same_as_torch_save(state_dict)


def test_storage_types_first_met_past_memo_index_255():  # 4-byte PUT, then 4-byte GET
    state_dict = OrderedDict((f"f{i}", np.full(2, i, "<f4")) for i in range(100))
    for i in range(2):
        state_dict[f"d{i}"], state_dict[f"l{i}"] = np.zeros(3, "<f8"), np.array(i, "<i8")
    _same_as_torch_save(state_dict)


def test_torch_reads_back_every_bit_and_can_mmap(synthetic_ckpt, tmp_path):
    state_dict = convert(open_reader(synthetic_ckpt), PortOptions()).state_dict
    path = tmp_path / "x.pth"
    path.write_bytes(_ours(state_dict))
    assert zipfile.ZipFile(path).testzip() is None  # every record's CRC-32
    for mmap in (False, True):  # mmap needs every storage aligned as torch aligns them
        loaded = torch.load(path, weights_only=True, mmap=mmap)
        assert type(loaded) is OrderedDict and list(loaded) == list(state_dict)
        for key, tensor in loaded.items():  # float32, and int64 scalars (num_batches_tracked)
            assert tensor.numpy().dtype == state_dict[key].dtype and not tensor.requires_grad
            assert tensor.shape == state_dict[key].shape and tensor.is_contiguous()
            assert np.array_equal(tensor.numpy(), state_dict[key]), key


def test_unsupported_arrays_are_refused():
    with pytest.raises(ValueError, match="float16"):
        save_state_dict({"half": np.zeros(2, np.float16)}, io.BytesIO())
    with pytest.raises(ValueError, match="C-contiguous: False"):
        save_state_dict({"strided": np.zeros((2, 2), np.float32).T}, io.BytesIO())
    with pytest.raises(ValueError, match=r"shape \[3, 0\]"):
        save_state_dict({"empty": np.zeros((3, 0), np.float32)}, io.BytesIO())


def test_a_different_tensor_gives_different_bytes(synthetic_ckpt):  # the comparison can fail
    state_dict = convert(open_reader(synthetic_ckpt), PortOptions()).state_dict
    changed = OrderedDict(state_dict, **{"fc.bias": state_dict["fc.bias"] + 1})
    assert _without_name_hash(_ours(changed)) != _without_name_hash(_torch_save(state_dict))
