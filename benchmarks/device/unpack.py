"""Write `pack.py`'s float16 weights back as a float32 all-MiniLM-L6-v2 folder (on the GPU machine).

python benchmarks/device/unpack.py .gpu/minilm /tmp/minilm
"""

from __future__ import annotations

import json
import lzma
import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def main() -> int:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("weights.*"), dirs_exist_ok=True)
    meta = json.loads((source / "weights.json").read_text(encoding="utf-8"))
    blob, sizes = (source / "weights.bin").read_bytes(), meta["sizes"]
    low = np.frombuffer(blob[: sizes["low"]], np.uint8)
    high = np.frombuffer(lzma.decompress(blob[sizes["low"] : sizes["low"] + sizes["high"]]), np.uint8)
    halves = np.stack([low, high], axis=1).reshape(-1).view(np.float16)
    rest = blob[sizes["low"] + sizes["high"] :]
    tensors, at, rest_at = {}, 0, 0
    for t in meta["tensors"]:
        count = int(np.prod(t["shape"], dtype=np.int64))
        if t["packed"] == "float16":
            tensors[t["name"]] = halves[at : at + count].astype(t["dtype"]).reshape(t["shape"])
            at += count
        else:
            size = count * np.dtype(t["packed"]).itemsize
            tensors[t["name"]] = np.frombuffer(rest[rest_at : rest_at + size], t["packed"]).reshape(t["shape"]).copy()
            rest_at += size
    save_file(tensors, str(target / "model.safetensors"))
    print(f"{target}: {len(tensors)} tensors, float16-rounded weights stored as float32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
