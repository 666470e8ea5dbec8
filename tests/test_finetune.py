"""`densekit finetune`: the stages end to end on a tiny SciFact subset with the tiny random BERT.

One finished run (module fixture, through the CLI with --json) is shared: its artefacts and report, a
rerun that skips every stage, a changed setting that re-runs from its stage, the dev slice kept out of
training and the test split read only by the final evaluation, a run killed mid-stage (fault point
``checkpoint-write``) that resumes at that stage, and bad config files. The numbers are meaningless
(random model); the plumbing is what is tested.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import run_cli, run_cli_subprocess
from test_cli_shape import KEYS_FILE, key_paths

from densekit.data import Run, load_dataset
from densekit.eval.metrics import evaluate
from densekit.finetune.config import STAGES

TINY = [
    "--mine-method",
    "naive",
    "--mine-depth",
    "20",
    "--ce-max-steps",
    "2",
    "--ce-batch-size",
    "4",
    "--ce-max-length",
    "32",
    "--max-steps",
    "3",
    "--batch-size",
    "4",
    "--max-length",
    "32",
    "--eval-steps",
    "1",
    "--save-steps",
    "1",
    "--device",
    "cpu",
    "--encode-batch-size",
    "32",
    "--teacher-min-gain=-1",  # a 2-step cross-encoder teaches here, so every stage's teacher path runs
]


def _subset(source: Path, target: Path, sizes: dict[str, int], distractors: int) -> Path:
    """The first `sizes[split]` judged queries of each split, their judged documents and some others."""
    (target / "qrels").mkdir(parents=True)
    queries, docs = set(), set()
    for split, n in sizes.items():
        with open(source / "qrels" / f"{split}.tsv", encoding="utf-8") as handle:
            rows = list(csv.reader(handle, delimiter="\t"))[1:]
        chosen = list(dict.fromkeys(r[0] for r in rows))[:n]
        kept = [r for r in rows if r[0] in chosen]
        with open(target / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as handle:
            handle.write("query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in kept))
        queries |= set(chosen)
        docs |= {r[1] for r in kept}
    for name, keep, others in (("corpus.jsonl", docs, distractors), ("queries.jsonl", queries, 0)):
        with open(source / name, encoding="utf-8") as src, open(target / name, "w", encoding="utf-8") as dst:
            for line in src:
                doc_id = json.loads(line)["_id"]
                if doc_id in keep or others > 0:
                    others -= doc_id not in keep
                    dst.write(line)
    return target


@pytest.fixture(scope="module")
def ft_data(scifact_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _subset(scifact_dir, tmp_path_factory.mktemp("ft_data"), {"train": 24, "test": 8}, 100)


@pytest.fixture(scope="module")
def finished(ft_data: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """A finished run through the CLI (--json), with every qrels file read recorded in order and a
    mark where the final evaluation stage began."""
    import densekit.data
    import densekit.splits
    from densekit.finetune.pipeline import Pipeline

    out = tmp_path_factory.mktemp("ft") / "run"
    reads: list[str] = []
    original_read, original_eval = densekit.data.read_qrels, Pipeline._eval

    def recording_read(path):
        reads.append(str(Path(path).resolve()))
        return original_read(path)

    def marked_eval(self, folder, resume):
        reads.append("<eval>")
        return original_eval(self, folder, resume)

    args = ["finetune", str(ft_data), "-m", str(tiny_model), "-o", str(out), *TINY, "--json"]
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout):
        patch.setattr(densekit.data, "read_qrels", recording_read)
        patch.setattr(densekit.splits, "read_qrels", recording_read)
        patch.setattr(Pipeline, "_eval", marked_eval)
        code, _, _ = run_cli(args)
    assert code == 0
    return {"out": out, "args": args, "summary": json.loads(stdout.getvalue()), "reads": reads}


def test_end_to_end_writes_every_artefact_and_the_report(finished, ft_data) -> None:
    out, summary = finished["out"], finished["summary"]
    assert {s: summary["stages"][s]["status"] for s in STAGES} == {s: "off" if s == "refit" else "ran" for s in STAGES}
    for path in ("model/config.json", "cross-encoder/config.json", "negatives.jsonl", "report.json", "report.md"):
        assert (out / path).is_file(), path
    assert (out / "dev_ndcg.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert {"config", "split", "chosen", "candidates", "metrics", "dev_curves", "model", "stages"} <= set(report)
    assert set(report["candidates"]) == {"none", "kl"} and report["chosen"]["distill"] in ("none", "kl")
    for split in ("dev", "test"):
        assert set(report["metrics"][split]) == {"base", "finetuned", "reranked", "blended"}
        assert set(report["metrics"][split]["base"]) == {"ndcg@10", "recall@100"}
    # the blend is the dev sweep's best point (weights x normalisations), and no worse on dev than either end
    blend = report["rerank_blend"]
    best = max(blend["dev_sweep"], key=lambda point: (point[2], -point[1]))
    assert [blend["normalization"], blend["weight"]] == best[:2] and len(blend["dev_sweep"]) == 22
    dev = report["metrics"]["dev"]
    assert dev["blended"]["ndcg@10"] >= max(dev["reranked"]["ndcg@10"], dev["finetuned"]["ndcg@10"]) - 1e-9
    assert [step for step, _ in report["dev_curves"]["none"]] == [1, 2, 3]
    # every evaluated run is kept (TREC) and scores what the report says: seeds and recipes compare query by query
    qrels = load_dataset(ft_data, split="test").qrels
    for label in ("base", "finetuned", "reranked", "blended"):
        run = Run.read_trec(out / "eval" / "runs" / f"test-{label}.trec")
        ndcg = evaluate(qrels, run, ["ndcg@10"]).metrics["ndcg@10"]
        assert ndcg == pytest.approx(report["metrics"]["test"][label]["ndcg@10"], abs=1e-4), label
    # the teacher check: the cross-encoder reranked the base model's dev run, whose ndcg@10 the report repeats
    teacher = report["teacher"]
    assert teacher["teaches"] and teacher["ce_dev_ndcg@10"] == report["reranker_best"]["ndcg@10"]
    assert teacher["base_dev_ndcg@10"] == pytest.approx(report["metrics"]["dev"]["base"]["ndcg@10"], abs=1e-9)
    dev_base = Run.read_trec(out / "reranker" / "dev-base.trec")
    assert len(dev_base) == len(load_dataset(out / "split" / "data", split="dev").queries)
    markdown = (out / "report.md").read_text()
    assert "it teaches" in markdown
    assert "| split | model | ndcg@10 | recall@100 |" in markdown
    assert (
        markdown.count("| test |") == 4
        and markdown.count("| dev |") == 4
        and "Blend: fine-tuned score weight" in markdown
    )
    assert key_paths(summary) == json.loads(KEYS_FILE.read_text())["finetune"]


def test_a_teacher_no_better_than_the_base_model_does_not_teach(finished, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished["out"], out)
    args = [*finished["args"], "--teacher-min-gain", "1"]  # no reranking gains a whole ndcg point
    args[args.index("-o") + 1] = str(out)
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads(stdout)
    assert [summary["stages"][s]["status"] for s in STAGES] == ["skipped"] * 3 + ["ran"] * 2 + ["off", "ran"]
    assert "does not teach" in err and summary["teacher"]["teaches"] is False
    assert (out / "score" / "negatives.jsonl").read_bytes() == (out / "mine" / "negatives.jsonl").read_bytes()
    report = json.loads((out / "report.json").read_text())
    assert set(report["candidates"]) == {"none"} and report["chosen"]["distill"] == "none"
    assert "**does not teach**" in (out / "report.md").read_text()


def test_without_a_cross_encoder_the_mined_negatives_train_none_and_nothing_reranks(
    finished, tmp_path, capsys, monkeypatch
) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished["out"], out)  # its cross-encoder/ must not outlive the switch
    args = [a if a != str(finished["out"]) else str(out) for a in finished["args"]] + ["--no-cross-encoder"]
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads(stdout)
    statuses = [summary["stages"][s]["status"] for s in STAGES]
    assert statuses == ["skipped", "skipped", "off", "ran", "ran", "off", "ran"]
    assert summary["teacher"]["teaches"] is False and summary["teacher"]["off"] is True
    assert (out / "score" / "negatives.jsonl").read_bytes() == (out / "mine" / "negatives.jsonl").read_bytes()
    report = json.loads((out / "report.json").read_text())
    assert set(report["candidates"]) == {"none"} and report["cross_encoder"] is None
    assert all(set(rows) == {"base", "finetuned"} for rows in report["metrics"].values())
    assert not (out / "cross-encoder").exists() and not list((out / "eval" / "runs").glob("*-reranked.trec"))
    assert "was not trained (--no-cross-encoder)" in (out / "report.md").read_text()


def test_no_cross_encoder_with_only_a_distillation_candidate_is_refused(tmp_path, capsys, monkeypatch) -> None:
    args = ["finetune", "scifact", "-m", "m", "-o", str(tmp_path / "o"), "--no-cross-encoder", "--distill", "kl"]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--distill none" in err and not (tmp_path / "o").exists()


def test_refit_trains_the_choice_again_with_the_dev_slice_and_delivers_it(
    finished, ft_data, tmp_path, capsys, monkeypatch
):
    from densekit.data import read_qrels
    from densekit.negatives import read_negatives

    out = tmp_path / "run"
    shutil.copytree(finished["out"], out)
    args = [a if a != str(finished["out"]) else str(out) for a in finished["args"]] + ["--refit"]
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    statuses = {name: s["status"] for name, s in json.loads(stdout)["stages"].items()}
    assert statuses == {**{s: "skipped" for s in STAGES[:5]}, "refit": "ran", "eval": "ran"}
    report = json.loads((out / "report.json").read_text())
    refit = report["refit"]
    # every training query, dev slice included, has its negatives mined the same way, and trains
    every = set(read_qrels(ft_data / "qrels" / "train.tsv"))
    mined = {r.query_id for r in read_negatives(out / "refit" / "negatives.jsonl")}
    assert mined == every and refit["queries"] == len(every) and refit["candidate"] == report["chosen"]["distill"]
    assert (out / "negatives.jsonl").read_bytes() == (out / "refit" / "negatives.jsonl").read_bytes()
    # the refit model is the delivered one, scored on test only (dev trained it), its run kept
    delivered, trained = out / "model" / "model.safetensors", out / refit["model"] / "model.safetensors"
    assert delivered.read_bytes() == trained.read_bytes()
    assert "refit" in report["metrics"]["test"] and "refit" not in report["metrics"]["dev"]
    run = Run.read_trec(out / "eval" / "runs" / "test-refit.trec")
    ndcg = evaluate(load_dataset(ft_data, split="test").qrels, run, ["ndcg@10"]).metrics["ndcg@10"]
    assert ndcg == pytest.approx(report["metrics"]["test"]["refit"]["ndcg@10"], abs=1e-4)
    assert "refit with the dev slice (delivered)" in (out / "report.md").read_text()


def test_refit_steps_follow_the_dev_choice() -> None:
    from densekit.finetune.config import FinetuneConfig
    from densekit.finetune.pipeline import Pipeline

    pipeline = Pipeline(FinetuneConfig(data="d", model="m", output=Path("o"), max_steps=None))
    pipeline.outputs["split"] = {"train_queries": 688, "dev_queries": 121}

    def steps(best: int | None, last: int) -> int | None:
        pipeline.outputs["train"] = {
            "chosen": "none",
            "runs": {"none": {"best": best and {"step": best}, "steps": last}},
        }
        return pipeline.refit_steps()

    assert steps(50, 50) is None  # dev chose the end: the whole schedule again, on 809 queries
    assert steps(25, 50) == 29  # an earlier step: scaled to the larger split (25 * 809 / 688 = 29.4)
    assert steps(None, 50) is None


def test_rerun_skips_every_stage(finished, ft_data, capsys, monkeypatch) -> None:
    corpus = ft_data / "corpus.jsonl"
    stat = corpus.stat()
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a restored copy: same bytes, new time
    start = time.perf_counter()
    code, out, err = run_cli(finished["args"], capsys, monkeypatch)
    assert code == 0, err
    statuses = [s["status"] for s in json.loads(out)["stages"].values()]
    assert statuses == ["off" if s == "refit" else "skipped" for s in STAGES]
    assert err.count("skipped") == len(STAGES) - 1
    assert time.perf_counter() - start < 20  # no model trained or encoded again (about 2 s idle)


@pytest.mark.parametrize(
    ("change", "field"),
    # a new bi-encoder seed keeps the mined files and the cross-encoder (three seeds cost three trainings)
    [(["--lr", "3e-5"], "learning_rate"), (["--seed", "7"], "seed"), (["--positives", "one"], "positives")],
)
def test_changed_setting_reruns_from_its_stage(change, field, finished, tmp_path, capsys, monkeypatch) -> None:
    copy = tmp_path / "run"
    shutil.copytree(finished["out"], copy)  # the finetune folder can move: outputs are relative
    args = [a if a != str(finished["out"]) else str(copy) for a in finished["args"]] + change
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    statuses = {name: s["status"] for name, s in json.loads(out)["stages"].items()}
    assert statuses == {
        "split": "skipped",
        "mine": "skipped",
        "reranker": "skipped",
        "score": "skipped",
        "train": "ran",
        "refit": "off",
        "eval": "ran",
    }
    assert f"{field} changed; re-running it and every stage after it" in err
    assert "an earlier stage re-ran" in err


def test_dev_slice_stays_out_of_training_and_test_is_read_only_by_eval(finished, ft_data) -> None:
    from densekit.data import read_qrels
    from densekit.negatives import read_negatives
    from densekit.splits import split_queries

    data = finished["out"] / "split" / "data"
    assert sorted(p.name for p in (data / "qrels").iterdir()) == ["dev.tsv", "train.tsv"]
    train, dev = set(read_qrels(data / "qrels" / "train.tsv")), set(read_qrels(data / "qrels" / "dev.tsv"))
    assert train and dev and not train & dev and train | dev == set(read_qrels(ft_data / "qrels" / "train.tsv"))
    assert split_queries(sorted(train | dev), 0.15, 0) == (sorted(train), sorted(dev))  # seeded, deterministic
    for stage in ("mine", "score"):
        mined = {record.query_id for record in read_negatives(finished["out"] / stage / "negatives.jsonl")}
        assert mined and mined <= train, stage
    test_qrels = str((ft_data / "qrels" / "test.tsv").resolve())
    reads = finished["reads"]
    assert test_qrels in reads and reads.index(test_qrels) > reads.index("<eval>")


def test_killed_stage_resumes_there(finished, tmp_path, capsys, monkeypatch) -> None:
    copy = tmp_path / "run"
    shutil.copytree(finished["out"], copy)
    args = [a if a != str(finished["out"]) else str(copy) for a in finished["args"]]
    args = [*args, "--max-steps", "4", "--until", "train"]  # the train stage runs again, 4 steps
    killed = run_cli_subprocess(args, env={"DENSEKIT_FAULT": "checkpoint-write:2", "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -9, killed.stderr  # SIGKILL while writing the step-2 checkpoint
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    stages = json.loads(out)["stages"]
    assert list(stages) == list(STAGES[: STAGES.index("train") + 1]) and stages["train"]["status"] == "ran"
    assert "train: resuming an interrupted run" in err
    resumed = json.loads((copy / "train" / "none" / "summary.json").read_text())
    assert resumed["resumed_from"].endswith("step-1") and resumed["steps"] == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_stepz = 3\n", "unknown setting 'max_stepz'"),
        ('max_steps = "three"\n', "setting 'max_steps' must be int, got 'three'"),
        ("dev_fraction = true\n", "setting 'dev_fraction' must be float"),
        ("max_steps = \n", "not valid TOML"),
    ],
)
def test_bad_config_file_is_one_line_and_exit_2(text, expected, tmp_path, capsys, monkeypatch) -> None:
    config = tmp_path / "ft.toml"
    config.write_text(text, encoding="utf-8")
    code, _, err = run_cli(
        ["finetune", "scifact", "-m", "m", "-o", str(tmp_path / "o"), "--config", str(config)], capsys, monkeypatch
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(config) in err and expected in err


def test_settings_added_later_leave_older_folders_done_at_their_defaults(tmp_path) -> None:
    from densekit.finetune.config import ADDED_LATER, FinetuneConfig
    from densekit.finetune.pipeline import Pipeline

    def train_inputs(**changes) -> dict:
        return Pipeline(FinetuneConfig(data="d", model="m", output=tmp_path / "o", **changes))._inputs("train")

    assert not set(ADDED_LATER) & set(train_inputs())  # a folder from before these settings is still done
    assert train_inputs(positives="one", precision="bf16")["positives"] == "one"


@pytest.mark.parametrize(("flag", "value"), [("--positives", "two"), ("--precision", "fp8")])
def test_bad_positives_or_precision_is_refused_before_any_model_loads(flag, value, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(
        ["finetune", "scifact", "-m", "m", "-o", str(tmp_path / "o"), flag, value], capsys, monkeypatch
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{value!r}" in err and not (tmp_path / "o").exists()


def test_a_precision_the_device_cannot_run_is_refused_before_any_stage(tmp_path, capsys, monkeypatch) -> None:
    args = ["finetune", "scifact", "-m", "m", "-o", str(tmp_path / "o"), "--precision", "fp16", "--device", "cpu"]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "fp16 needs a CUDA device" in err and not (tmp_path / "o").exists()


def test_config_file_settings_and_flags_override(tmp_path) -> None:
    from densekit.finetune.config import build_config, read_config_file

    config = tmp_path / "ft.toml"
    config.write_text('data = "scifact"\nmodel = "m"\noutput = "o"\nmax-steps = 7\nce_lr = 1\n', encoding="utf-8")
    built = build_config(read_config_file(config), {"max_steps": 9, "epochs": None})
    assert (built.data, built.max_steps, built.ce_lr, built.epochs, built.output) == ("scifact", 9, 1.0, 2, Path("o"))


def test_a_folder_that_is_not_a_finetune_folder_is_refused(tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    code, _, err = run_cli(["finetune", "scifact", "-m", "m", "-o", str(tmp_path)], capsys, monkeypatch)
    assert code == 2 and "holds files densekit did not write" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"
