"""Re-mining during training (`train --remine-every`, Conan-embedding): schedule, logged counts, the
same mining rule, no cache pollution, bit-identical resume across a re-mine, and refused values.

A tiny random BERT mines the SciFact subset (the recorded options: shift 2, two negatives sampled
uniformly with seed 7 from the top 20), then trains on that file, re-mining with its own weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from densekit.negatives import read_negatives
from densekit.retriever.train import DataConfig, LossConfig, TrainConfig, train
from densekit.retriever.train.checkpoints import checkpoint_dirs
from densekit.retriever.train.remine import count_changes
from densekit.serialize import load_state


@pytest.fixture(scope="module")
def mined(tiny_model: Path, scifact_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("remine") / "neg.jsonl"
    # A random model scores everything alike (PercPos would keep nothing): skip the top 2, sample 2 of the rest.
    options = ["--method", "shift", "--shift", "2", "--sampler", "uniform", "--seed", "7", "--negatives", "2"]
    args = ["mine", str(scifact_small), "--split", "test", "--teacher", str(tiny_model), "--out", str(out)]
    assert run_cli([*args, *options, "--depth", "20", "--device", "cpu", "--quiet"])[0] == 0
    return out


def _config(tiny_model: Path, negatives: Path, corpus: Path, output: Path, **run) -> TrainConfig:
    settings = {"epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "device": "cpu", "seed": 5, **run}
    return TrainConfig(
        model=str(tiny_model),
        output=output,
        data=DataConfig(negatives=negatives, corpus=str(corpus), negatives_per_query=2),
        **settings,
    )


def _records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def _ids(path: Path) -> dict[str, list[str]]:
    return {r.query_id: [n.id for n in r.negatives] for r in read_negatives(path)}


def _cache_entries(home: Path) -> set[str]:
    root = home / "embeddings"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def test_remine_every_n_steps_logs_counts_and_resumes_bit_identically(
    tiny_model: Path, mined: Path, scifact_small: Path, tmp_path: Path, densekit_home: Path
) -> None:
    cached = _cache_entries(densekit_home)
    run = {"remine_every": "3", "save_steps": 2, "keep_checkpoints": 1}
    straight = train(_config(tiny_model, mined, scifact_small, tmp_path / "straight", **run))
    total = straight["total_steps"]
    remines = [r for r in _records(tmp_path / "straight") if "remine" in r]
    assert [r["step"] for r in remines] == list(range(3, total, 3)) and len(remines) >= 3

    # The logged counts are the files' differences; training moved the negatives.
    previous = mined
    for record in remines:
        current = tmp_path / "straight" / record["remine"]["file"]
        assert current == tmp_path / "straight" / "remined" / f"step-{record['step']}.negatives.jsonl"
        changed, queries = count_changes(_ids(previous), _ids(current))
        assert (record["remine"]["negatives_changed"], record["remine"]["queries_changed"]) == (changed, queries)
        assert record["remine"]["queries"] == len(_ids(current))
        previous = current
    assert sum(r["remine"]["negatives_changed"] for r in remines) > 0
    # In-training weights never reach the embedding cache (the mining fixture filled it for the base model).
    assert _cache_entries(densekit_home) == cached

    # Interrupted after the first re-mine (step 3): checkpoint step-5 (the only one kept) holds its negatives.
    split = tmp_path / "split"
    stopped = train(_config(tiny_model, mined, scifact_small, split, stop_after_steps=5, **run))
    assert stopped["steps"] == 5 and not stopped["finished"]
    assert [p.name for p in checkpoint_dirs(split)] == ["step-5"]
    stored = split / "checkpoints" / "step-5" / "negatives.jsonl"
    assert stored.read_bytes() == (tmp_path / "straight" / "remined" / "step-3.negatives.jsonl").read_bytes()
    shutil.rmtree(split / "remined")  # resume must read the checkpoint's copy, not mine again differently
    resumed = train(_config(tiny_model, mined, scifact_small, split, **run), resume=True)
    assert resumed["finished"] and resumed["resumed_from"].endswith("step-5")

    expected, got = (
        load_file(tmp_path / "straight/model/model.safetensors"),
        load_file(split / "model/model.safetensors"),
    )
    assert expected.keys() == got.keys() and all(torch.equal(got[k], v) for k, v in expected.items())

    def counts(output: Path) -> list[tuple]:
        return [
            (r["step"], r["remine"]["negatives_changed"], r["remine"]["queries_changed"])
            for r in _records(output)
            if "remine" in r
        ]

    assert counts(split) == counts(tmp_path / "straight")
    losses = [(r["step"], r["loss"]) for r in _records(tmp_path / "straight") if "loss" in r]
    assert [(r["step"], r["loss"]) for r in _records(split) if "loss" in r] == losses


def test_remine_every_epoch_with_unchanged_weights_reproduces_the_mined_file(
    tiny_model: Path, mined: Path, scifact_small: Path, tmp_path: Path
) -> None:
    """A learning rate too small to move float32 weights: re-mining runs the recorded rule (filter,
    seeded sampler, depth, count) with the same model, so it writes the same negatives and logs 0 changes."""
    out = tmp_path / "run"
    summary = train(_config(tiny_model, mined, scifact_small, out, remine_every="epoch", learning_rate=1e-12))
    records = _records(out)
    remines = [r for r in records if "remine" in r]
    end_of_epoch_0 = max(r["step"] for r in records if "loss" in r and r["epoch"] == 0)
    assert [r["step"] for r in remines] == [end_of_epoch_0] and end_of_epoch_0 < summary["total_steps"]
    assert remines[0]["epoch"] == 0  # the end of the last epoch re-mines nothing: no step is left
    assert remines[0]["remine"]["negatives_changed"] == 0 and remines[0]["remine"]["queries_changed"] == 0
    again = read_negatives(out / remines[0]["remine"]["file"])
    original = read_negatives(mined)
    assert [(r.query_id, [(n.id, n.rank) for n in r.negatives]) for r in again] == [
        (r.query_id, [(n.id, n.rank) for n in r.negatives]) for r in original
    ]
    for a, b in zip(again, original, strict=True):
        for x, y in zip(a.negatives, b.negatives, strict=True):
            assert x.teacher_score == pytest.approx(y.teacher_score, abs=1e-5)
    sidecar = json.loads((out / "remined" / f"step-{remines[0]['step']}.negatives.jsonl.config.json").read_text())
    assert sidecar["teacher"]["fingerprint"].startswith("in-training:")
    assert sidecar["filters"] == json.loads(Path(f"{mined}.config.json").read_text())["filters"]


def test_remine_with_a_gist_guide_and_distillation_trains_on_the_new_negatives(
    tiny_model: Path, mined: Path, scifact_small: Path, tmp_path: Path
) -> None:
    """The GIST guide's embeddings and the distillation scores follow the re-mined negatives."""
    out = tmp_path / "gist"
    summary = train(
        _config(
            tiny_model,
            mined,
            scifact_small,
            out,
            remine_every="2",
            max_steps=4,
            loss=LossConfig(name="gist", guide=str(tiny_model), distill="margin-mse", teacher_score="teacher_score"),
        )
    )
    assert summary["finished"] and [r["step"] for r in _records(out) if "remine" in r] == [2]
    guide = load_state(out / "guide_cache")
    remined = {n.id for r in read_negatives(out / "remined" / "step-2.negatives.jsonl") for n in r.negatives}
    assert remined <= set(guide["doc_rows"])


def test_remine_every_refuses_bad_values_and_files_without_a_recorded_mining(
    tiny_model: Path, mined: Path, train_negatives: Path, scifact_small: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    base = ["train", "--model", str(tiny_model), "--corpus", str(scifact_small), "--output", str(tmp_path / "o")]
    for value in ("0", "foo", "-2", "1.5"):
        code, _, stderr = run_cli([*base, "--negatives", str(mined), "--remine-every", value], capsys, monkeypatch)
        assert code == 2, stderr
        assert f"--remine-every must be a positive number of steps or 'epoch', got '{value}'" in stderr
        assert len(stderr.strip().splitlines()) == 1
    code, _, stderr = run_cli([*base, "--negatives", str(train_negatives), "--remine-every", "2"], capsys, monkeypatch)
    assert code == 2 and "no mining configuration to re-run" in stderr and len(stderr.strip().splitlines()) == 1
    altered = tmp_path / "altered.jsonl"
    altered.write_text(mined.read_text().replace('"rank": 1', '"rank": 7', 1))
    shutil.copyfile(f"{mined}.config.json", f"{altered}.config.json")
    code, _, stderr = run_cli([*base, "--negatives", str(altered), "--remine-every", "2"], capsys, monkeypatch)
    assert code == 2 and "differs from what altered.jsonl.config.json describes" in stderr
    assert not (tmp_path / "o").exists()  # refused before any model loaded or folder was made
