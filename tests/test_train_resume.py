"""Checkpoint and resume: stopping after N steps and resuming gives the same final weights, bit for bit.

A tiny random BERT (with dropout, so the RNG state must be restored too) trains two epochs on
tuples built from the SciFact subset; one run goes straight through, the other stops mid-epoch,
and a second `train(resume=True)` call continues from the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from densekit.errors import DensekitError
from densekit.retriever.train import DataConfig, LossConfig, TrainConfig, train
from densekit.serialize import load_state, save_state


def _config(
    tiny_model: Path, negatives: Path, corpus: Path, output: Path, positives: str = "all", **run
) -> TrainConfig:
    return TrainConfig(
        model=str(tiny_model),
        output=output,
        data=DataConfig(negatives=negatives, corpus=str(corpus), negatives_per_query=2, positives=positives),
        epochs=2,
        batch_size=4,
        learning_rate=1e-3,
        max_length=48,
        device="cpu",
        seed=5,
        **run,
    )


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("positives", ["all", "one"])
def test_resume_reproduces_the_uninterrupted_run(
    tiny_model: Path, train_negatives: Path, scifact_small: Path, tmp_path: Path, positives: str
) -> None:
    straight = train(_config(tiny_model, train_negatives, scifact_small, tmp_path / "straight", positives))
    assert straight["finished"] and straight["steps"] > 6
    queries = len(train_negatives.read_text().splitlines())
    assert straight["examples"] > queries  # some queries have several positives
    assert straight["examples_per_epoch"] == (queries if positives == "one" else straight["examples"])

    stopped = train(
        _config(tiny_model, train_negatives, scifact_small, tmp_path / "split", positives, stop_after_steps=3)
    )
    assert not stopped["finished"] and stopped["steps"] == 3 and stopped["model"] is None
    assert (tmp_path / "split" / "checkpoints" / "step-3" / "state.safetensors").is_file()
    resumed = train(_config(tiny_model, train_negatives, scifact_small, tmp_path / "split", positives), resume=True)
    assert resumed["finished"] and resumed["resumed_from"].endswith("step-3")
    assert resumed["steps_this_run"] == straight["steps"] - 3

    expected, got = _weights(tmp_path / "straight" / "model"), _weights(tmp_path / "split" / "model")
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    start = _weights(tiny_model)
    moved = [name for name in expected if not torch.equal(expected[name], start[name])]
    assert len(moved) > 10  # training changed the weights, so equality above is not vacuous
    # the frozen pooler head is saved unchanged
    assert all(torch.equal(expected[n], start[n]) for n in expected if n.startswith("pooler."))

    def losses(run: str) -> list[tuple[int, float]]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]

    assert losses("split") == losses("straight")  # one record per step, none repeated after the resume


def test_resume_with_distillation_reproduces_the_uninterrupted_run(
    tiny_model: Path, train_negatives: Path, scifact_small: Path, tmp_path: Path
) -> None:
    """InfoNCE + 0.5 x MarginMSE from stored cross-encoder scores: the loss module's state and the
    teacher scores resume with the run, so stop + resume is bit-identical too."""
    from test_train_distill import write_scored

    scored = write_scored(train_negatives, tmp_path / "scored.jsonl")

    def config(output: Path, **run) -> TrainConfig:
        loss = LossConfig(distill="margin-mse", distill_weight=0.5, learnable_temperature=True)
        return _config(tiny_model, scored, scifact_small, output, loss=loss, max_steps=5, **run)

    straight = train(config(tmp_path / "straight"))
    assert straight["finished"] and straight["teacher_score"] == "ce_score"
    train(config(tmp_path / "split", stop_after_steps=2))
    resumed = train(config(tmp_path / "split"), resume=True)
    assert resumed["finished"] and resumed["resumed_from"].endswith("step-2")
    expected, got = _weights(tmp_path / "straight" / "model"), _weights(tmp_path / "split" / "model")
    assert all(torch.equal(got[name], tensor) for name, tensor in expected.items())
    assert resumed["temperature"] == straight["temperature"] != 0.05  # the learnable temperature moved and resumed


def test_resume_refuses_a_changed_recipe(
    tiny_model: Path, train_negatives: Path, scifact_small: Path, tmp_path: Path
) -> None:
    train(_config(tiny_model, train_negatives, scifact_small, tmp_path / "run", stop_after_steps=1))
    changed = _config(tiny_model, train_negatives, scifact_small, tmp_path / "run")
    changed.learning_rate = 5e-4
    with pytest.raises(DensekitError, match="learning_rate"):
        train(changed, resume=True)


def test_resume_accepts_a_checkpoint_from_before_a_setting_existed(
    tiny_model: Path, train_negatives: Path, scifact_small: Path, tmp_path: Path
) -> None:
    """A checkpoint whose recipe lacks a later-added setting resumes as if it held the default."""
    train(_config(tiny_model, train_negatives, scifact_small, tmp_path / "run", stop_after_steps=1))
    state_dir = tmp_path / "run" / "checkpoints" / "step-1"
    state = load_state(state_dir)
    del state["recipe"]["forward_batch_size"]  # as written before forward_batch_size existed
    del state["recipe"]["inputs"]  # ... and before the inputs' content hashes were recorded
    save_state(state_dir, state)
    resumed = train(_config(tiny_model, train_negatives, scifact_small, tmp_path / "run"), resume=True)
    assert resumed["finished"] and resumed["resumed_from"].endswith("step-1")
    changed = _config(tiny_model, train_negatives, scifact_small, tmp_path / "run2", stop_after_steps=1)
    train(changed)
    changed.forward_batch_size = 3
    changed.stop_after_steps = None
    with pytest.raises(DensekitError, match="forward_batch_size"):
        train(changed, resume=True)


def test_bf16_on_cpu_trains_under_autocast_where_the_cpu_has_it(
    tiny_model: Path, train_negatives: Path, scifact_small: Path, tmp_path: Path
) -> None:
    from densekit.retriever.train.loop import cpu_has_bf16

    def run(name: str, precision: str) -> dict:
        config = _config(tiny_model, train_negatives, scifact_small, tmp_path / name, max_steps=3, precision=precision)
        return train(config)

    with pytest.raises(DensekitError, match="fp16 needs a CUDA device"):
        run("fp16", "fp16")
    if not cpu_has_bf16():  # e.g. a CI runner without AVX512-BF16 or AMX: refused, not emulated slowly
        with pytest.raises(DensekitError, match="needs native bf16"):
            run("bf16", "bf16")
        return
    full, half = run("fp32", "no"), run("bf16", "bf16")
    assert half["finished"] and half["steps"] == full["steps"] == 3
    lines = (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in map(json.loads, lines) if "loss" in r)
    a, b = _weights(tmp_path / "fp32" / "model"), _weights(tmp_path / "bf16" / "model")
    assert all(t.dtype == torch.float32 for t in b.values())  # master weights stay float32
    assert any(not torch.equal(a[n], b[n]) for n in a)  # autocast really ran in bf16
