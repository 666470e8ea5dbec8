"""Training under faults and hostile files (issue 16, items 2 and 6).

- crafted pickles (a checkpoint `state.pt`, a GIST `guide_cache.pt`) are never loaded: their payload
  would create a marker file, which must not appear;
- a new run into a folder that holds a run is refused (exit 2), `overwrite=True` starts over;
- a negatives file replaced at the same path is refused on resume;
- a truncated newest checkpoint falls back to the previous one, a torn metrics line is dropped,
  and the result is bit-identical to an uninterrupted run;
- kill -9 in the middle of writing a checkpoint, then resume: bit-identical final weights.

One tiny random BERT on the SciFact subset, 3 steps of batch 4; a stopped run (2 of 3 steps,
checkpoints step-1 and step-2) is trained once and restored before each test that needs it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from densekit.errors import DensekitError
from densekit.retriever.train import DataConfig, LossConfig, TrainConfig, train

REPO = Path(__file__).resolve().parents[2]


def _config(tiny_model: Path, negatives: Path, corpus: Path, output: Path, **run) -> TrainConfig:
    settings = {
        "max_steps": 3,
        "save_steps": 1,
        "keep_checkpoints": 3,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "max_length": 32,
        "device": "cpu",
        "seed": 7,
        **run,
    }
    return TrainConfig(
        model=str(tiny_model),
        output=output,
        data=DataConfig(negatives=negatives, corpus=str(corpus), negatives_per_query=1),
        **settings,
    )


class _CreateFile:
    """Unpickling this calls open(path, "w"): a stand-in for any code a crafted pickle runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _craft_pickle(target: Path, marker: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(pickle.dumps({"model": _CreateFile(marker), "recipe": {}}))
    probe = marker.with_name(marker.name + ".probe")  # the payload really runs when unpickled
    pickle.loads(pickle.dumps(_CreateFile(probe))).close()
    assert probe.is_file()


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def _losses(run: Path) -> list[tuple[int, float]]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def _assert_same_run(run: Path, straight: Path) -> None:
    expected, got = _weights(straight), _weights(run)
    assert expected.keys() == got.keys()
    assert all(torch.equal(got[name], tensor) for name, tensor in expected.items())
    assert _losses(run) == _losses(straight)


@pytest.fixture(scope="module")
def negatives(train_negatives: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the negatives file (one test replaces it in place)."""
    path = tmp_path_factory.mktemp("fault_negatives") / "negatives.jsonl"
    shutil.copyfile(train_negatives, path)
    return path


@pytest.fixture(scope="module")
def config(tiny_model: Path, negatives: Path, scifact_small: Path) -> Callable[..., TrainConfig]:
    return lambda output, **run: _config(tiny_model, negatives, scifact_small, output, **run)


@pytest.fixture(scope="module")
def straight(config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every resumed run must equal, bit for bit."""
    out = tmp_path_factory.mktemp("fault_straight") / "run"
    assert train(config(out))["finished"]
    return out


@pytest.fixture(scope="module")
def stopped(config, tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Path]:
    """Returns a function that puts back, at one fixed path, a run stopped after 2 of 3 steps."""
    root = tmp_path_factory.mktemp("fault_stopped")
    out, saved = root / "run", root / "saved"
    summary = train(config(out, stop_after_steps=2))
    assert not summary["finished"] and summary["steps"] == 2
    shutil.copytree(out, saved)

    def restore() -> Path:
        shutil.rmtree(out)
        shutil.copytree(saved, out)
        return out

    return restore


def test_crafted_checkpoint_pickle_is_never_loaded(
    config,
    stopped,
    straight: Path,
    tmp_path: Path,
    tiny_model: Path,
    negatives: Path,
    scifact_small: Path,
    capsys,
    monkeypatch,
) -> None:
    out = stopped()
    marker = tmp_path / "ran-code"
    _craft_pickle(out / "checkpoints" / "step-9" / "state.pt", marker)
    summary = train(config(out), resume=True)
    err = capsys.readouterr().err
    assert not marker.exists()
    assert "step-9/state.pt" in err and "never loaded" in err
    assert summary["finished"] and summary["resumed_from"].endswith("step-2")
    _assert_same_run(out, straight)

    # Only a legacy pickle checkpoint: a one-line error, exit 2, nothing executed.
    legacy = tmp_path / "legacy"
    _craft_pickle(legacy / "checkpoints" / "step-3" / "state.pt", marker)
    code, _, err = run_cli(
        [
            "train",
            "--model",
            str(tiny_model),
            "--negatives",
            str(negatives),
            "--corpus",
            str(scifact_small),
            "--output",
            str(legacy),
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--resume",
            "--quiet",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2 and not marker.exists()
    last = err.strip().splitlines()[-1]
    assert "no checkpoint can be resumed" in last and "step-3/state.pt" in last and "--overwrite" in last


def test_crafted_guide_cache_pickle_is_never_loaded(
    config, tiny_model: Path, negatives: Path, scifact_small: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "gist"
    marker = tmp_path / "ran-code"
    _craft_pickle(out / "guide_cache.pt", marker)
    summary = train(config(out, max_steps=1, loss=LossConfig(name="gist", guide=str(tiny_model))))
    err = capsys.readouterr().err
    assert summary["finished"] and not marker.exists()
    assert "guide_cache.pt" in err and "never loaded" in err
    cache = out / "guide_cache"
    assert (cache / "state.safetensors").is_file() and (cache / "state.json").is_file()

    # A damaged cache is announced and recomputed, not used.
    from densekit.data import load_dataset
    from densekit.retriever.train.data import read_training_examples
    from densekit.retriever.train.guide import GuideCache

    corpus = load_dataset(scifact_small).corpus
    examples = read_training_examples(negatives, corpus, 1)
    good = GuideCache.build(str(tiny_model), examples, corpus, "cpu", cache)
    tensors = cache / "state.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-64])
    rebuilt = GuideCache.build(str(tiny_model), examples, corpus, "cpu", cache)
    assert "damaged guide cache" in capsys.readouterr().err
    assert torch.equal(rebuilt.documents, good.documents)
    assert GuideCache.build(str(tiny_model), examples, corpus, "cpu", cache).doc_rows == good.doc_rows


def test_new_run_into_a_run_folder_is_refused_and_overwrite_starts_over(
    config,
    stopped,
    tmp_path: Path,
    tiny_model: Path,
    negatives: Path,
    scifact_small: Path,
    capsys,
    monkeypatch,
) -> None:
    out = stopped()
    (out / "checkpoints" / "notes.txt").write_text("mine")
    code, _, err = run_cli(
        [
            "train",
            "--model",
            str(tiny_model),
            "--negatives",
            str(negatives),
            "--corpus",
            str(scifact_small),
            "--output",
            str(out),
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--quiet",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2
    message = err.strip().splitlines()[-1]
    assert str(out) in message and "--resume" in message and "--output" in message and "--overwrite" in message
    names = sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("."))
    assert names == ["notes.txt", "step-1", "step-2"]  # nothing removed

    code, stdout, err = run_cli(
        [
            "train",
            "--model",
            str(tiny_model),
            "--negatives",
            str(negatives),
            "--corpus",
            str(scifact_small),
            "--output",
            str(out),
            "--batch-size",
            "4",
            "--lr",
            "5e-4",
            "--max-steps",
            "2",
            "--max-length",
            "32",
            "--save-steps",
            "1",
            "--keep-checkpoints",
            "1",
            "--device",
            "cpu",
            "--overwrite",
            "--json",
            "--quiet",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["finished"] and summary["steps"] == 2 and summary["resumed_from"] is None
    assert "--overwrite: removed the previous run" in err
    kept = sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("."))
    assert kept == ["notes.txt", "step-2"]  # the new run's newest; a file densekit did not write stays
    assert [step for step, _ in _losses(out)] == [1, 2]
    assert json.loads((out / "checkpoints" / "step-2" / "densekit_train.json").read_text())["learning_rate"] == 5e-4

    foreign = tmp_path / "foreign"
    (foreign / "model").mkdir(parents=True)
    (foreign / "model" / "code.py").write_text("print('mine')\n")
    with pytest.raises(DensekitError, match="not written by densekit"):
        train(config(foreign), overwrite=True)
    assert (foreign / "model" / "code.py").is_file()
    with pytest.raises(DensekitError, match="one of them"):
        train(config(foreign), resume=True, overwrite=True)


def test_rotation_keeps_the_checkpoint_just_written(tmp_path: Path) -> None:
    from densekit.retriever.train.checkpoints import checkpoint_dirs, rotate
    from densekit.serialize import save_state

    for step in (3, 10, 11):
        save_state(tmp_path / "checkpoints" / f"step-{step}", {"step": step})
    rotate(tmp_path, keep=1, written=tmp_path / "checkpoints" / "step-3")
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-3", "step-11"]


def test_resume_refuses_a_replaced_negatives_file(config, stopped, negatives: Path) -> None:
    out = stopped()
    original = negatives.read_text()
    negatives.write_text("".join(reversed(original.splitlines(keepends=True))))  # same path, other content
    try:
        with pytest.raises(DensekitError) as caught:
            train(config(out), resume=True)
    finally:
        negatives.write_text(original)
    message = str(caught.value)
    assert f"the negatives file {negatives} changed" in message and "step-2" in message


def test_truncated_newest_checkpoint_falls_back_and_torn_metrics_line_is_dropped(
    config, stopped, straight: Path, capsys
) -> None:
    out = stopped()
    newest = out / "checkpoints" / "step-2" / "state.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 3, "epoch": 0, "lo')  # the process died mid-write
    summary = train(config(out), resume=True)
    err = capsys.readouterr().err
    assert summary["finished"] and summary["resumed_from"].endswith("step-1")
    assert "step-2/state.safetensors" in err and "trying the previous checkpoint" in err
    assert "torn last line" in err
    _assert_same_run(out, straight)

    for state in (out / "checkpoints").glob("step-*/state.safetensors"):
        state.write_bytes(b"\0" * 10)
    with pytest.raises(DensekitError, match="no checkpoint can be resumed"):
        train(config(out), resume=True)


_RUN = (
    "import json, sys\nfrom densekit.retriever.train import TrainConfig, train\n"
    "train(TrainConfig.from_json(json.loads(sys.argv[1])))\n"
)


def test_kill_9_mid_checkpoint_then_resume_is_bit_identical(config, straight: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cfg = config(out)
    env = {**os.environ, "DENSEKIT_FAULT": "checkpoint-write:2", "DENSEKIT_QUIET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, json.dumps(cfg.to_json())],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [p.name for p in (out / "checkpoints").iterdir() if p.is_dir() and not p.name.startswith(".")] == [
        "step-1"
    ]  # step-2 was being written when the process died
    summary = train(cfg, resume=True)
    assert summary["finished"] and summary["resumed_from"].endswith("step-1")
    _assert_same_run(out, straight)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]  # staging cleaned
