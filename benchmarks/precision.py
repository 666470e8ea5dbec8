"""Training step time in float32 against bf16 autocast, the same tuples, in one run (`densekit train --precision`).

Each round trains the start model `--steps` steps twice from the same seed, once per precision (the
order alternates between rounds), each in its own `densekit train` process; a step's time is the
trainer's `train_seconds` over the steps (model loading excluded). Reported: seconds per step of each
precision, float32 / bf16 (the speed-up), and how far the per-step losses of the two runs drift apart.

    DENSEKIT_DATA=../shared/data/beir python benchmarks/precision.py \\
        --negatives-file /tmp/scifact.neg.jsonl --steps 10 --rounds 2 --out /tmp/precision

On a CPU without native bf16 (AVX512-BF16 or AMX) densekit refuses `--precision bf16`; the benchmark
then records that and trains nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from commands import DENSEKIT

PRECISIONS = ("no", "bf16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="scifact", help="BEIR folder or name (the corpus of the tuples)")
    p.add_argument("--negatives-file", type=Path, required=True, help="mined negatives (densekit mine)")
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="OMP threads of every process")
    p.add_argument("--out", type=Path, required=True, help="scratch folder (one training folder per run)")
    p.add_argument("--json-out", type=Path, help="write the result JSON here too")
    return p.parse_args(argv)


def train_once(args: argparse.Namespace, precision: str, folder: Path) -> dict:
    """One `densekit train` run; its seconds per step and per-step losses."""
    command = [DENSEKIT, "train", "--model", args.model, "--negatives", str(args.negatives_file),
               "--corpus", args.data, "--output", str(folder), "--negatives-per-query", "1",
               "--batch-size", str(args.batch_size), "--lr", "5e-5", "--max-steps", str(args.steps),
               "--seed", "1", "--precision", precision, "--device", args.device, "--json", "--quiet"]  # fmt: skip
    command += ["--max-length", str(args.max_length)] if args.max_length else []
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"[precision] {precision} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    losses = [r["loss"] for r in map(json.loads, lines) if "loss" in r]
    return {"seconds_per_step": round(summary["train_seconds"] / summary["steps"], 3), "losses": losses}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from densekit.retriever.train.loop import cpu_has_bf16

    result: dict = {"data": args.data, "model": args.model, "steps": args.steps, "batch_size": args.batch_size,
                    "device": args.device, "rounds": []}  # fmt: skip
    if args.device == "cpu" and not cpu_has_bf16():
        result["bf16"] = "refused: this CPU has no native bf16 (AVX512-BF16 or AMX)"
    else:
        start = time.perf_counter()
        for number in range(1, args.rounds + 1):
            order = PRECISIONS if number % 2 else PRECISIONS[::-1]
            runs = {p: train_once(args, p, args.out / f"round{number}-{p}") for p in order}
            drift = max(abs(a - b) for a, b in zip(runs["no"]["losses"], runs["bf16"]["losses"], strict=True))
            row = {"round": number, "first": order[0], "max_loss_drift": round(drift, 4),
                   **{f"{p}_seconds_per_step": runs[p]["seconds_per_step"] for p in PRECISIONS}}  # fmt: skip
            row["speedup"] = round(row["no_seconds_per_step"] / row["bf16_seconds_per_step"], 3)
            result["rounds"].append(row)
            print(json.dumps(row), flush=True)
        result["speedup_mean"] = round(sum(r["speedup"] for r in result["rounds"]) / len(result["rounds"]), 3)
        result["wall_s"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
