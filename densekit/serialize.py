"""Safe state files: nested Python structures as safetensors + JSON, never pickle.

A training checkpoint (model, optimizer and scheduler state, RNG states, data position) or a
cache of embeddings is a nested structure of dicts, lists, tuples, scalars, torch tensors and
numpy arrays. `save_state(directory, obj)` writes it as two files:

    state.safetensors   every tensor and array of `obj`, by a generated key (t0, t1, ...)
    state.json          the structure, with tensors replaced by their key, and the sha256 of
                        state.safetensors (so a truncated or swapped tensor file is caught)

`load_state(directory)` reads it back. Loading parses JSON and safetensors only, so a file can
hold data but never code (unlike `torch.load(weights_only=False)`/pickle, which run whatever a
crafted file names). Anything that does not decode is an `IntegrityError` naming the file.

Encodings (JSON values that are objects with a ``"__densekit__"`` tag):

    tuple                 {"__densekit__": "tuple", "items": [...]}
    dict, non-str keys    {"__densekit__": "dict", "items": [[key, value], ...]}  (optimizer state
                          uses int keys; a str-keyed dict that holds the tag key is encoded so too)
    float inf/-inf/nan    {"__densekit__": "float", "value": "inf" | "-inf" | "nan"}
    torch.Tensor          {"__densekit__": "tensor", "key": "t3"}
    numpy.ndarray         {"__densekit__": "ndarray", "key": "t4"}   (numpy's RNG state holds one)
    numpy scalar          {"__densekit__": "npscalar", "key": "t5"}  (a 0-d array, back as np.generic)

None, bool, int, str, finite floats, lists and str-keyed dicts are plain JSON; Python's
`random.getstate()` (a tuple of ints) and numpy's `get_state()` (a tuple with a uint32 array)
round-trip exactly. Dict subclasses (OrderedDict) come back as dict. Tensors come back on CPU,
detached. Other types are refused when saving (TypeError), never guessed.

Example::

    save_state(folder, {"model": model.state_dict(), "rng": (random.getstate(), np.random.get_state())})
    state = load_state(folder)

The two files are each written atomically; write into a staging directory (`densekit.io.atomic_dir`)
when the pair must appear together.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from densekit.errors import IntegrityError
from densekit.io import atomic_file

FORMAT = "densekit-state"
VERSION = 1
TENSORS_FILE = "state.safetensors"
JSON_FILE = "state.json"
TAG = "__densekit__"


class _Encoder:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._storages: set[int] = set()

    def _store(self, tensor: torch.Tensor) -> str:
        tensor = tensor.detach().to("cpu").contiguous()
        # safetensors refuses tensors that share memory (views, tied weights): those get a copy
        storage = tensor.untyped_storage().data_ptr()
        if tensor.numel() and storage in self._storages:
            tensor = tensor.clone()
        self._storages.add(tensor.untyped_storage().data_ptr())
        key = f"t{len(self.tensors)}"
        self.tensors[key] = tensor
        return key

    def encode(self, obj: Any) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, torch.Tensor):
            return {TAG: "tensor", "key": self._store(obj)}
        if isinstance(obj, np.ndarray):
            return {TAG: "ndarray", "key": self._store(_array_to_tensor(obj))}
        if isinstance(obj, np.generic):
            return {TAG: "npscalar", "key": self._store(_array_to_tensor(np.asarray(obj)))}
        if type(obj) is int:
            return obj
        if type(obj) is float:
            if math.isfinite(obj):
                return obj
            return {TAG: "float", "value": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
        if type(obj) is tuple:
            return {TAG: "tuple", "items": [self.encode(item) for item in obj]}
        if type(obj) is list:
            return [self.encode(item) for item in obj]
        if isinstance(obj, dict):
            if all(type(k) is str for k in obj) and TAG not in obj:
                return {k: self.encode(v) for k, v in obj.items()}
            return {TAG: "dict", "items": [[self.encode(k), self.encode(v)] for k, v in obj.items()]}
        raise TypeError(f"save_state cannot store a {type(obj).__module__}.{type(obj).__qualname__}")


def _array_to_tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype.hasobject:
        raise TypeError("save_state cannot store numpy arrays of Python objects")
    return torch.from_numpy(np.array(array, copy=True, order="C"))


def save_state(directory: str | Path, obj: Any) -> None:
    """Write `obj` (see the module docstring for what it may hold) as state.safetensors + state.json
    in `directory` (created if missing)."""
    directory = Path(directory)
    encoder = _Encoder()
    body = encoder.encode(obj)
    data = save_tensors(encoder.tensors)
    with atomic_file(directory / TENSORS_FILE, "wb") as handle:
        handle.write(data)
    header = {"format": FORMAT, "version": VERSION, "tensors_sha256": hashlib.sha256(data).hexdigest(), "object": body}
    with atomic_file(directory / JSON_FILE) as handle:
        json.dump(header, handle, allow_nan=False)
        handle.write("\n")


def has_state(directory: str | Path) -> bool:
    """Whether `directory` holds a state written by `save_state` (both files present; not verified)."""
    directory = Path(directory)
    return (directory / JSON_FILE).is_file() and (directory / TENSORS_FILE).is_file()


def load_state(directory: str | Path) -> Any:
    """Read what `save_state` wrote in `directory`; IntegrityError (naming the file) if it does not decode."""
    directory = Path(directory)
    json_path, tensors_path = directory / JSON_FILE, directory / TENSORS_FILE
    try:
        header = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError(f"{json_path}: unreadable state file ({exc}); delete it") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
        raise IntegrityError(f"{json_path}: not a {FORMAT} version {VERSION} file; delete it")
    try:
        data = tensors_path.read_bytes()
    except OSError as exc:
        raise IntegrityError(f"{tensors_path}: unreadable tensor file ({exc}); delete it") from None
    if hashlib.sha256(data).hexdigest() != header.get("tensors_sha256"):
        raise IntegrityError(f"{tensors_path}: sha256 does not match {json_path} (truncated or replaced); delete it")
    try:
        tensors = load_tensors(data)
    except Exception as exc:  # safetensors raises its own error type for every malformed header
        raise IntegrityError(f"{tensors_path}: not a safetensors file ({exc}); delete it") from None
    try:
        return _decode(header["object"], tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{json_path}: malformed state ({type(exc).__name__}: {exc}); delete it") from None


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(item, tensors) for item in obj]
    if not isinstance(obj, dict):
        return obj
    if TAG not in obj:
        return {k: _decode(v, tensors) for k, v in obj.items()}
    tag = obj[TAG]
    if tag == "tuple":
        return tuple(_decode(item, tensors) for item in obj["items"])
    if tag == "dict":
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in obj["items"]}
    if tag == "float":
        value = obj["value"]
        if value not in ("inf", "-inf", "nan"):
            raise ValueError(f"bad float {value!r}")
        return float(value)
    if tag == "tensor":
        return tensors[obj["key"]]
    if tag == "ndarray":
        return tensors[obj["key"]].numpy()
    if tag == "npscalar":
        return tensors[obj["key"]].numpy()[()]
    raise ValueError(f"unknown tag {tag!r}")


def _hashable(key: Any) -> Any:
    if isinstance(key, (list, dict)):
        raise ValueError(f"dict key {key!r} is not hashable")
    return key
