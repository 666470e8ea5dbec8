"""densekit.serialize: every type a training checkpoint holds round-trips exactly; damage is an IntegrityError."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from densekit.errors import IntegrityError
from densekit.serialize import JSON_FILE, TENSORS_FILE, load_state, save_state


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_round_trip_of_every_encoded_type(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    state = {
        "python_rng": random.getstate(),  # (3, tuple of 625 ints, None)
        "numpy_rng": np.random.get_state(),  # ('MT19937', uint32 array, int, int, float)
        "torch_rng": torch.get_rng_state(),
        "optimizer": optimizer.state_dict(),  # int keys, tuples (betas), None, bools, 0-d tensors
        "floats": [float("inf"), float("-inf"), float("nan"), 0.1, -0.0],
        "scalars": [None, True, False, 0, -(2**40), "text", np.float32(2.5), np.int64(7)],
        "keys": {1: "int", (2, "a"): "tuple", None: "none", 2.5: "float", "__densekit__": "tag as a key"},
        "nested": ((1, (2,)), [[]], {}),
        "dtypes": [
            torch.zeros(2, dtype=torch.bfloat16),
            torch.tensor([True, False]),
            torch.zeros(0, 4),
            np.arange(4, dtype=np.uint32),
            np.ones((2, 2), dtype=np.float16),
        ],
        # a view and its base share memory; safetensors needs them apart
        "shared": [weight, weight[0], weight.t()],
    }
    save_state(tmp_path, state)
    header = json.loads((tmp_path / JSON_FILE).read_text())
    assert header["format"] == "densekit-state" and "Infinity" not in (tmp_path / JSON_FILE).read_text()
    loaded = load_state(tmp_path)
    assert _same(state, loaded)
    # the restored RNG states drive the generators exactly as the saved ones
    random.setstate(loaded["python_rng"])
    np.random.set_state(loaded["numpy_rng"])
    torch.set_rng_state(loaded["torch_rng"])
    drawn = (random.random(), np.random.rand(), torch.rand(1).item())
    random.setstate(state["python_rng"])
    np.random.set_state(state["numpy_rng"])
    torch.set_rng_state(state["torch_rng"])
    assert drawn == (random.random(), np.random.rand(), torch.rand(1).item())
    restored = torch.optim.AdamW(model.parameters())
    restored.load_state_dict(loaded["optimizer"])
    assert restored.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]


def test_unsupported_types_are_refused_when_saving(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="set"):
        save_state(tmp_path, {"x": {1, 2}})
    with pytest.raises(TypeError, match="objects"):
        save_state(tmp_path, {"x": np.array([object()])})


@pytest.mark.parametrize(
    "damage", ["truncate-tensors", "flip-tensor-byte", "truncate-json", "unknown-tag", "missing-key", "missing-json"]
)
def test_damaged_state_is_an_integrity_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    save_state(tmp_path, {"w": torch.arange(100, dtype=torch.float32), "t": (1, 2)})
    tensors, header = tmp_path / TENSORS_FILE, tmp_path / JSON_FILE
    if damage == "truncate-tensors":
        tensors.write_bytes(tensors.read_bytes()[:-50])
    elif damage == "flip-tensor-byte":
        data = bytearray(tensors.read_bytes())
        data[-3] ^= 0xFF
        tensors.write_bytes(bytes(data))
    elif damage == "truncate-json":
        header.write_text(header.read_text()[:-10])
    elif damage == "unknown-tag":
        header.write_text(header.read_text().replace('"tuple"', '"pickle"'))
    elif damage == "missing-key":
        header.write_text(header.read_text().replace('"t0"', '"t9"'))
    else:
        header.unlink()
    with pytest.raises(IntegrityError) as caught:
        load_state(tmp_path)
    message = str(caught.value)
    assert str(tmp_path) in message and "\n" not in message
