"""The `densekit` command the benchmark scripts run as subprocesses (ablation, finetune, serve, ...)."""

from __future__ import annotations

import sys
from pathlib import Path

# the command beside this interpreter (its venv), else the one on PATH (a lent GPU machine: device/run.sh)
_BESIDE = Path(sys.executable).with_name("densekit")
DENSEKIT = str(_BESIDE) if _BESIDE.is_file() else "densekit"


def eval_command(
    data: str, model: Path | str, split: str, run: Path, device: str | None, depth: int = 100
) -> list[str]:
    """`densekit eval` of `model` on `data`'s `split`, its top `depth` written to the TREC file `run`."""
    device_args = ["--device", device] if device else []
    return [DENSEKIT, "eval", data, "--model", str(model), "--split", split, "--depth", str(depth),
            "--run-out", str(run), *device_args, "--json", "--quiet"]  # fmt: skip
