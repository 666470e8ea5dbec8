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


def require_models(models: list[str | Path]) -> None:
    """Exit with densekit's one-line message when a model is not available here: checked before the first
    stage, so a missing one (the GIST guide, all-mpnet-base-v2, needs `densekit models fetch`) stops a
    benchmark at its start, not hours in when the stage that needs it comes."""
    from densekit.errors import DensekitError
    from densekit.retriever.models import resolve_model

    for model in models:
        try:
            resolve_model(model)
        except DensekitError as error:
            raise SystemExit(f"{Path(sys.argv[0]).name}: {error}") from None
