"""Training checkpoints and the training output folder: writing, rotating, reading with fallback.

A checkpoint is ``checkpoints/step-N/``: ``state.safetensors`` + ``state.json`` (see
`densekit.serialize`; never pickle) and ``densekit_train.json``, written in one atomic swap. Reading
for ``--resume`` takes the newest checkpoint that decodes: a truncated or damaged newest one is
announced and the previous one used. A ``state.pt`` left by an older densekit is a pickle, which can
run code when loaded; it is never loaded, only announced and skipped.

The output folder of a run belongs to that run: a new run (without resume) into a folder that already
holds checkpoints or a model is refused, unless it is asked to start over (`overwrite`), which first
removes what `densekit train` wrote there (checkpoints, model, best, metrics, summary) and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from densekit.errors import DensekitError, InputError, IntegrityError
from densekit.faults import fault_point
from densekit.io import atomic_dir, atomic_file, lock_path, read_marker, write_json
from densekit.progress import announce
from densekit.serialize import JSON_FILE, TENSORS_FILE, load_state, save_state

LEGACY_STATE = "state.pt"
TRAIN_CONFIG = "densekit_train.json"
CHECKPOINTS = "checkpoints"
REMINED = "remined"  # negatives re-mined during training (densekit.retriever.train.remine)
STATE_KEYS = ("model", "loss", "optimizer", "scheduler", "scaler", "rng", "position", "best", "recipe")
_STEP = re.compile(r"^step-(\d+)$")


def rng_state() -> dict:
    """The RNG states of Python, numpy, torch and (when present) every CUDA device."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- listing


def checkpoint_dirs(output: Path) -> list[Path]:
    """Every ``checkpoints/step-N`` folder under `output` holding a state (new or legacy), by step."""
    root = output / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP.match(path.name)
        if match and path.is_dir() and any((path / f).is_file() for f in (JSON_FILE, TENSORS_FILE, LEGACY_STATE)):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def is_legacy(path: Path) -> bool:
    """A checkpoint of an older densekit: a pickle ``state.pt`` and no safe state beside it."""
    return (path / LEGACY_STATE).is_file() and not (path / JSON_FILE).is_file()


# ----------------------------------------------------------------------------- writing


def write_checkpoint(target: Path, state: dict, config_json: dict, files: dict[str, Path] | None = None) -> None:
    """Write `state` (keys STATE_KEYS), the run's configuration and copies of `files` (name in the
    checkpoint -> file, e.g. re-mined negatives) to `target` in one atomic swap."""
    # A legacy step-N (no marker) at the same step is densekit's own and is replaced.
    with atomic_dir(target, kind="checkpoint", overwrite=is_legacy(target)) as staging:
        save_state(staging, state)
        fault_point("checkpoint-write")  # the fault suite kills a run here, mid-checkpoint
        write_json(staging / TRAIN_CONFIG, config_json)
        for name, source in (files or {}).items():
            shutil.copyfile(source, staging / name)


def rotate(output: Path, keep: int, written: Path) -> None:
    """Keep the newest `keep` checkpoints by step number, and always `written` (the one just saved)."""
    current = [p for p in checkpoint_dirs(output) if not is_legacy(p)]
    kept = set(current[-keep:]) | {written}
    for old in current:
        if old not in kept:
            _remove_tree(old)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        lock_path(path).unlink()


# ----------------------------------------------------------------------------- reading


def read_newest(output: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint under `output` that decodes, and its state; None when there is none.

    An undecodable or legacy newest checkpoint is announced and skipped for the previous one; when
    checkpoints exist but none can be read, a DensekitError says so (nothing is unpickled, ever).
    """
    dirs = checkpoint_dirs(output)
    problems = []
    for path in reversed(dirs):
        if is_legacy(path):
            problems.append(f"{path / LEGACY_STATE} is a pickle from an older densekit, never loaded")
            announce(
                f"{path / LEGACY_STATE}: a pickle checkpoint from an older densekit is never loaded "
                "(unpickling can run code); skipping it"
            )
            continue
        try:
            state = load_state(path)
            if not isinstance(state, dict) or any(key not in state for key in STATE_KEYS):
                raise IntegrityError(f"{path / JSON_FILE}: not a training checkpoint (keys missing); delete it")
        except IntegrityError as exc:
            problems.append(str(exc))
            announce(f"{exc}; trying the previous checkpoint")
            continue
        return path, state
    if dirs:
        raise DensekitError(
            f"{output / CHECKPOINTS}: no checkpoint can be resumed from ({'; '.join(problems)}); "
            "start over with --overwrite or choose another --output"
        )
    return None


# ----------------------------------------------------------------------------- the output folder


def check_training_folder(output: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a new run into a folder that already holds a training run (see the module docstring)."""
    if resume and overwrite:
        raise DensekitError(
            f"{output}: --resume continues the run there and --overwrite starts it over; pass one of them"
        )
    if overwrite:
        _refuse_foreign_models(output)
    if resume or overwrite:
        return
    found = [f"{CHECKPOINTS}/"] if checkpoint_dirs(output) else []
    found += [f"{name}/" for name in ("model", "best") if (output / name).exists()]
    if found:
        raise DensekitError(
            f"{output} already holds a training run ({', '.join(found)}); pass --resume to continue it, "
            "choose another --output, or pass --overwrite to start over"
        )


def _refuse_foreign_models(output: Path) -> list[Path]:
    """The ``model/`` and ``best/`` folders of `output`; DensekitError if one was not written by densekit."""
    models = [output / name for name in ("model", "best") if (output / name).exists() or (output / name).is_symlink()]
    for folder in models:
        real_dir = folder.is_dir() and not folder.is_symlink()
        marker = read_marker(folder) if real_dir else None
        ours = (marker or {}).get("kind") == "model" or (real_dir and (folder / TRAIN_CONFIG).is_file())
        if not ours:
            raise DensekitError(f"{folder} was not written by densekit train; move it away before --overwrite")
    return models


def clear_training_folder(output: Path) -> list[Path]:
    """Remove what `densekit train` wrote in `output` (for `overwrite`); return what was removed.

    Checkpoints, ``model/``, ``best/``, ``remined/``, ``metrics.jsonl`` and ``summary.json`` go; a ``model/`` or
    ``best/`` that densekit did not write is refused (DensekitError) before anything is removed, and
    other files under ``checkpoints/`` stay. The guide cache stays: it is keyed and verified.
    """
    models = _refuse_foreign_models(output)
    remined = [output / REMINED] if (output / REMINED).is_dir() else []
    removed = [*checkpoint_dirs(output), *models, *remined]
    for path in removed:
        _remove_tree(path)
    with contextlib.suppress(OSError):
        (output / CHECKPOINTS).rmdir()  # only when nothing else is left in it
    for name in ("metrics.jsonl", "summary.json"):
        if (output / name).is_file():
            (output / name).unlink()
            removed.append(output / name)
    if removed:
        announce(f"--overwrite: removed the previous run in {output} ({', '.join(p.name for p in removed)})")
    return removed


def trim_metrics(path: Path, step: int) -> None:
    """Keep the records of `path` logged at or before `step` (a resume logs the rest again).

    A torn last line (the process died mid-write) is dropped and announced; a malformed line
    before the last is an InputError naming the line.
    """
    if not path.is_file():
        return
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    keep = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            if number == last:
                announce(f"{path}:{number + 1}: dropped a torn last line (the run stopped mid-write)")
                continue
            raise InputError(path, "not a JSON object (metrics are one object per line)", number + 1) from None
        if record.get("step", 0) <= step:
            keep.append(line)
    with atomic_file(path) as handle:
        handle.write("".join(line + "\n" for line in keep))
