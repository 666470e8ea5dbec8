"""The `densekit` command the benchmark scripts run as subprocesses (ablation, finetune, serve, ...), and the
helpers they share: seeds from the command line, the settings and output of a result."""

from __future__ import annotations

import argparse
import json
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


def parse_seeds(text: str) -> list[int]:
    """`--seeds 1,2,3` as distinct integers (exit with a one-line message otherwise)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds: give distinct integers, got {text!r}")
    return seeds


OUTPUT_ARGS = ("out", "json_out", "markdown_out", "archive")


def settings_of(args: argparse.Namespace, leave_out: tuple[str, ...] = OUTPUT_ARGS) -> dict:
    """The script's arguments for its record (paths as strings), less the output locations."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in leave_out}


def emit(result: dict, table: str, args: argparse.Namespace) -> int:
    """Print the result JSON (stdout) and its table (stderr); write them to --json-out / --markdown-out."""
    if args.markdown_out:
        args.markdown_out.write_text(table + "\n", encoding="utf-8")
    text = json.dumps(result, indent=1, default=str)
    if args.json_out:
        args.json_out.write_text(text, encoding="utf-8")
    print(text)
    print(table, file=sys.stderr)
    return 0
