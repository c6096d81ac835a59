"""Refusing HDF5 files whose objects lead out of the file, before any data is read.

HDF5 lets a file borrow bytes from elsewhere: an external link names an object in another
file, a soft link may name a path that leads through such a link (or nowhere), a dataset may
keep its raw data in external files (any file: ``/etc/passwd`` reads as floats), and a virtual
dataset maps other files' datasets. A weights or golden file needs none of this, and reading
through any of it would put bytes that are not in the file into a port or a verdict. So the
readers (``porting.read.keras_h5``, ``porting.verify.goldens``) call ``check_self_contained`` right after
opening a file, before they touch an object through a link or read a byte of data: every link
in the file is a hard link or a soft link that resolves inside it, and no dataset has external
or virtual storage. Only metadata is read.
"""
from __future__ import annotations

from pathlib import Path

from porting.errors import PortError, escaped, first_line

_FAILURES = (OSError, RuntimeError, KeyError, ValueError, TypeError)  # what h5py raises


def shown(name) -> str:
    """An HDF5 name or path for a one-line message (control characters escaped)."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "backslashreplace")
    return escaped(str(name))


def check_self_contained(path: str | Path, h5file) -> None:
    """PortError naming ``path`` and the object if any link in the open ``h5file`` is external
    (or of a user-defined type), any soft link dangles or loops, or any dataset keeps its data
    outside the file (external raw storage, virtual dataset)."""
    import h5py

    names: list[bytes] = []
    try:
        # H5Lvisit: every link of every group reached by hard links (none followed out)
        h5file.id.links.visit(names.append)
        links = [(name, h5file.get(name, getlink=True)) for name in names]
    except _FAILURES as err:
        raise PortError(f"{path}: damaged HDF5 file: cannot list its objects "
                        f"({type(err).__name__}: {first_line(err, escape=True)})") from err
    soft = []
    for name, link in links:
        if isinstance(link, h5py.ExternalLink):
            raise PortError(f"{path}: {shown(name)} is an external link to "
                            f"{shown(link.filename)}:{shown(link.path)}; refusing to read "
                            "outside the file")
        if isinstance(link, h5py.SoftLink):
            soft.append((name, link))
        elif not isinstance(link, h5py.HardLink):
            raise PortError(f"{path}: {shown(name)} is a link of a user-defined type; "
                            "refusing to follow it")
    # No link leaves the file now, so resolving a soft link cannot open another file.
    for name, link in soft:
        try:
            target = h5file.get(name)
        except _FAILURES:  # too many soft links in a row: a loop
            target = None
        if target is None:
            raise PortError(f"{path}: soft link {shown(name)} -> {shown(link.path)} leads "
                            "nowhere in the file")

    def check(name, obj):
        if isinstance(obj, h5py.Dataset):
            check_dataset(path, obj, name)

    try:
        h5file.visititems(check)  # H5Ovisit: every object, through hard links
    except _FAILURES as err:
        raise PortError(f"{path}: damaged HDF5 file: cannot inspect its objects "
                        f"({type(err).__name__}: {first_line(err, escape=True)})") from err


def check_dataset(path: str | Path, dataset, name: str | None = None) -> None:
    """PortError if ``dataset`` keeps its data outside the file (from its creation property
    list: no data is read)."""
    from h5py import h5d

    name = shown(dataset.name if name is None else name)
    plist = dataset.id.get_create_plist()
    if plist.get_layout() == h5d.VIRTUAL:
        raise PortError(f"{path}: dataset {name} is a virtual dataset (its data is mapped from "
                        "other datasets or files); refusing to read it")
    count = plist.get_external_count()
    if count > 0:
        first = shown(plist.get_external(0)[0])
        raise PortError(f"{path}: dataset {name} keeps its data in {count} external file(s) "
                        f"({first}{', ...' if count > 1 else ''}); refusing to read outside "
                        "the file")
