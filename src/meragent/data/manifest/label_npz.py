"""Read MER's ``label-6way.npz`` without letting a tampered file run code.

MER stores each ``<split>_corpus`` (name -> {'emo': ..., 'val': ...}) as a pickled 0-d object
array, which ``np.load`` only reads with ``allow_pickle=True``. The members are read here with an
unpickler that accepts numpy arrays, numpy scalars and plain Python data only.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from meragent.errors import DataError

#: The only globals a MER label file's pickles may reference: numpy's array rebuilders.
_LABEL_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _LabelUnpickler(pickle.Unpickler):
    """Unpickles only plain data plus numpy arrays/scalars; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _LABEL_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core"):
            module = "numpy._core" + module.removeprefix("numpy.core")  # numpy 1 pickles
        return super().find_class(module, name)


def read_label_npz(path: Path) -> dict[str, Any]:
    """Read MER's ``label-6way.npz``: each key -> its value (``<split>_corpus`` dicts).

    MER stores each corpus as a pickled 0-d object array, which ``np.load`` only reads with
    ``allow_pickle=True`` — that would run any code a tampered file carries. Instead the
    pickled members are read with an unpickler that accepts numpy arrays, numpy scalars and
    plain Python data only, so a downloaded label file cannot execute anything.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"label file {path} is not a readable .npz: {exc}") from None
    result: dict[str, Any] = {}
    with archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as handle:
                try:
                    value = _read_npy_member(handle)
                except (ValueError, pickle.UnpicklingError, EOFError) as exc:
                    raise DataError(f"label file {path}: cannot read {member}: {exc}") from None
            result[member.removesuffix(".npy")] = value
    return result


def _read_npy_member(handle: Any) -> Any:
    fmt = np.lib.format
    version = fmt.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(handle)
    else:
        shape, fortran, dtype = fmt.read_array_header_2_0(handle)
    if dtype.hasobject:
        array = _LabelUnpickler(handle).load()
        if not isinstance(array, np.ndarray):
            raise ValueError("pickled member is not an array")
        return array.item() if array.ndim == 0 else array.tolist()
    count = int(np.prod(shape)) if shape else 1
    data = np.frombuffer(handle.read(count * dtype.itemsize), dtype=dtype, count=count)
    return data.reshape(shape, order="F" if fortran else "C").copy()
