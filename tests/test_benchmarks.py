"""Benchmarks do not rot: each runs at its smoke size through benchmarks/run.py and leaves a complete record.

Smoke size: the 20-query SciFact subset, a random tiny BERT, a few thousand synthetic vectors. No
timing is asserted (the numbers mean nothing at this size); what is checked is that the script still
runs end to end and that its record carries every key and a non-empty set of figures. The table
renderers are checked on such records, and the RESULTS.md rewrite on a copy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import record as records  # noqa: E402
import renderers  # noqa: E402
import run as runner  # noqa: E402

# Many processes each (both libraries, fresh process per measurement, a JVM or a server): minutes
# on a busy machine, so they run with the slow tests.
SLOW = {
    "mining",
    "bm25",
    "serve",
    "milvus",
    "train",
    "train-quality",
    "matryoshka",
    "ablation",
    "ablation-dev",
    "ablation-nfcorpus",
    "scaling-mining",
    "scaling-train",
}
CASES = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in runner.REGISTRY]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One scratch folder for every benchmark: the smoke dataset and tiny model are made once."""
    return tmp_path_factory.mktemp("bench")


@pytest.mark.parametrize("name", CASES)
def test_benchmark_smoke_run_writes_a_complete_record(name: str, workdir: Path, beir_root: Path) -> None:
    results = workdir / f"results-{name}"
    command = [sys.executable, str(REPO / "benchmarks" / "run.py"), "--size", "smoke", "--only", name]
    done = subprocess.run(
        [*command, "--workdir", str(workdir), "--results", str(results), "--quiet"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [path] = results.glob(f"{name}-smoke-*.json")
    record = json.loads(path.read_text(encoding="utf-8"))
    assert records.missing_keys(record) == []
    assert record["benchmark"] == name and record["size"] == "smoke"
    assert record["command"][1].endswith(runner.REGISTRY[name].script)
    assert len(record["load_before"]) == 3 and len(record["load_after"]) == 3
    assert record["machine"]["cores"] >= 1 and record["versions"]["densekit"]
    assert record["commit"]["sha"] and isinstance(record["commit"]["dirty"], bool)
    record["_path"] = str(path)
    table = runner.REGISTRY[name].render(record)
    assert table.count("|") > 4, table
    if name == "ablation":  # every trained model and the start model also scored zero-shot (--generality)
        [g] = record["figures"]["generality"].values()
        assert set(g["variants"]) == set(record["figures"]["variants"]) and 0 <= g["start_model_ndcg@10"] <= 1
        assert "Zero-shot on" in table and all(stage["cpu"] for stage in record["figures"]["stages"])
        # cross-fitting: each fold mined by a cross-encoder trained on the other folds only, joined in order
        out = Path(record["command"][record["command"].index("--out") + 1])
        joined = [json.loads(line) for line in (out / "negatives" / "percpos+scored-xfit.jsonl").open()]
        order = [json.loads(line)["query_id"] for line in (out / "negatives" / "naive.jsonl").open()]
        assert [r["query_id"] for r in joined] == order and any(r["positive_ce_scores"] for r in joined)
        folds = sorted((out / "crossfit").glob("fold*"))
        assert len(folds) == 2 and (out / "negatives" / "percpos+scored-xfit.jsonl.config.json").is_file()
        for fold in folds:
            mined = {json.loads(line)["query_id"] for line in (fold / "percpos+scored-xfit.jsonl").open()}
            trained = {json.loads(line)["query_id"] for line in (fold / "ce-naive.jsonl").open()}
            assert mined and trained and not mined & trained and (fold / "cross-encoder" / "model").is_dir()
        # a fresh machine: the run folder gone, the archive left; nothing is mined, trained or evaluated again
        shutil.rmtree(out)
        again = subprocess.run([sys.executable, *record["command"][1:]], capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        rerun = json.loads(again.stdout)
        assert rerun["stages"] and all(stage["reused"] for stage in rerun["stages"]), rerun["stages"]
        # ... and still names every stage of the first run with its wall time (minings and cross-encoders too)
        assert {s["stage"] for s in rerun["stages"]} == {s["stage"] for s in record["figures"]["stages"]}
        assert not (out / "train" / "naive" / "seed1" / "model").exists()
        assert rerun["variants"] == record["figures"]["variants"]
        # a training archived without its evaluations: its model is gone, so it trains again (not reused)
        archive = Path(record["command"][record["command"].index("--archive") + 1])
        shutil.rmtree(out)
        for run in archive.glob("runs/**/naive-seed1.*"):
            run.unlink()
        command = [*record["command"][1:], "--variants", "naive"]
        third = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=300)
        assert third.returncode == 0, third.stderr[-3000:]
        stages = {stage["stage"]: stage["reused"] for stage in json.loads(third.stdout)["stages"]}
        assert stages["train naive seed 1"] is False and stages["eval naive seed 1"] is False, stages
        assert (out / "train" / "naive" / "seed1" / "model").is_dir()
    if name == "finetune":  # the later seed reused the first seed's teachers and trained the dev choice only
        f = record["figures"]
        assert f["per_seed"]["2"]["stages"]["reranker"]["status"] == "skipped"
        assert f["per_seed"]["2"]["stages"]["train"]["status"] == "ran"
        assert set(f["comparisons"]) == {"finetuned_vs_base", "reranked_vs_finetuned", "blended_vs_finetuned"}
        assert f["rows"]["test/finetuned"]["ndcg@10"]["sd"] is not None
        [g] = f["generality"].values()  # both seeds' models and the start model scored zero-shot, paired
        assert len(g["variants"]["finetuned"]["per_seed"]) == 2 and "Zero-shot on" in table
    if name == "rerank-nfcorpus":  # BM25's top hits only, no seed group
        f = record["figures"]
        assert [r["first_stage"] for r in f["rows"]] == ["bm25"] and f["groups"] == []
        assert set(f["rows"][0]["paired"]) == {"reranked_vs_first", "blended_vs_first"}
    if name == "rerank":  # both first stages reranked; the blend chosen on dev and applied to test
        f = record["figures"]
        assert [r["first_stage"].split("/")[-1] for r in f["rows"]] == ["tiny-bert", "bm25"]
        for row in f["rows"]:
            sweep = row["blend"]["dev_sweep"]
            assert len(sweep) == 22 and max(v for *_, v in sweep) == row["dev"]["blended"]["ndcg@10"]
            assert set(row["paired"]) == {"reranked_vs_first", "blended_vs_first"}
        assert f["cross_encoder"]["dev_curve"] and f["cross_encoder"]["steps"] == 2
        [group] = f["groups"]  # the two first stages summarised as if seeds: means of the rows, pooled tests
        blended = [row["test"]["blended"]["ndcg@10"] for row in f["rows"]]
        assert group["test"]["blended"]["ndcg@10"]["per_seed"] == blended
        assert abs(group["test"]["blended"]["ndcg@10"]["mean"] - sum(blended) / 2) < 1e-4
        pooled = group["paired"]["blended_vs_first"]["ndcg@10"]["wins_ties_losses"]
        assert sum(pooled) == 2 * f["rows"][0]["test"]["queries"]
        assert "seeds of one recipe" in table
    if name == "ablation-nfcorpus":  # NFCorpus's shape: one positive per query per epoch, its own folder
        f = record["figures"]
        assert f["settings"]["positives"] == "one" and list(f["variants"]) == ["naive"]
    if name == "ablation-dev":  # selection mode: trained and reported inside the training split, test never read
        f = record["figures"]
        assert f["eval_split"] == "dev" and f["dev_slice"]["dev_queries"] >= 1 and f["dev_slice"]["train_queries"] >= 1
        assert "test not read" in table


def test_render_rewrites_only_the_marked_blocks(tmp_path: Path) -> None:
    record = records.new_record("encode", "full", ["python", "benchmarks/encode.py"], threads=2)
    record |= {"load_after": [99.0, 1.0, 1.0], "wall_s": 12.0}
    record["figures"] = {
        "docs_per_s": {"densekit": 10.0, "sentence-transformers": 8.0},
        "all_rounds_docs_per_s": {"densekit": [10.0], "sentence-transformers": [8.0]},
        "ratio_densekit_vs_st": 1.25,
    }
    assert records.missing_keys(record) == []
    results = tmp_path / "results"
    records.write_record(record, results)
    older = {**record, "date": "2000-01-01T00:00:00Z", "figures": {**record["figures"], "ratio_densekit_vs_st": 0.5}}
    records.write_record(older, results)
    target = tmp_path / "RESULTS.md"
    prose = "# Results\n\nHand-written prose.\n\n"
    target.write_text(
        prose
        + "<!-- table: encode -->\nold\n<!-- /table -->\n\nMore prose.\n<!-- table: index -->\nx\n<!-- /table -->\n"
    )

    outcome = records.render_results(
        {"encode": renderers.render_encode, "index": renderers.render_index}, results, target
    )

    text = target.read_text(encoding="utf-8")
    assert outcome == {"encode": "rendered", "index": "no record"}
    assert text.startswith(prose) and "More prose." in text and "\nold\n" not in text
    assert "**1.250x**" in text and "0.500x" not in text  # the newest record wins
    assert records.DAGGER in text  # load 99 on any machine here is above 1.0 per core
    rows = [line for line in text.splitlines() if line.startswith("| densekit ")]
    assert rows and rows[0].endswith(f"/ 99.00{records.DAGGER} |")  # each line shows its load average
    assert "<!-- table: index -->\nx\n<!-- /table -->" in text


def test_make_bench_runs_the_runner() -> None:
    done = subprocess.run(["make", "-n", "bench", "SIZE=smoke"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "benchmarks/run.py --size smoke" in done.stdout


def test_args_reach_the_one_benchmark_and_only_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ctx = runner.Context("full", tmp_path, 2, extra=["--variants", "naive,percpos"])
    command = runner.REGISTRY["ablation"].command(ctx, tmp_path / "figures.json")
    assert command[-4:] == ["--variants", "naive,percpos", "--json-out", str(tmp_path / "figures.json")]
    with pytest.raises(SystemExit) as stopped:
        runner.main(["--only", "ablation,encode", "--args", "--seeds 1", "--list"])
    assert stopped.value.code == 2 and "exactly one benchmark" in capsys.readouterr().err


def test_finetune_table_says_which_stages_earlier_runs_finished() -> None:
    skipped = {"stages": {"train": {"status": "skipped"}, "refit": {"status": "off"}, "eval": {"status": "skipped"}}}
    skipped["wall_s"] = 3.0
    ran = {"stages": {"train": {"status": "ran"}, "eval": {"status": "ran"}}, "wall_s": 2100.0}
    assert renderers._seed_wall(skipped).startswith("reused")
    assert renderers._seed_wall(ran) == "35 min"
    partly = {"stages": {"train": {"status": "skipped"}, "eval": {"status": "ran"}}, "wall_s": 36.0}
    assert renderers._seed_wall(partly) == "1 min (this run: eval; train done by earlier runs)"


def test_ablation_table_shows_each_arms_training_time_and_the_shared_stages() -> None:
    record = json.loads((REPO / "benchmarks" / "results" / "ablation-full-20261205T191505Z.json").read_text())
    text = records.with_load_column(renderers.render_ablation(record), record)
    naive = next(line for line in text.splitlines() if line.startswith("| naive |"))
    # the record's three training stages in seed order; the load range around naive's own stages
    assert naive.endswith("| 58 | 484, 496, 422 | 1.56-2.11 |")
    assert text.count("load avg") == 2  # each table has its rows' own load column, not the writing run's
    assert "mine percpos+gist 1596 s" in text and "train-reranker 875 s" in text
    assert "| <0.001 / <0.001 |" in text and "| 0.000 /" not in text  # p below 0.0005 is not printed as zero


def test_ablation_stops_at_its_start_when_the_guide_is_missing(tiny_model: Path, tmp_path: Path) -> None:
    import ablation

    missing = tmp_path / "no-such-guide"
    out = tmp_path / "ablation"
    with pytest.raises(SystemExit) as stopped:
        ablation.main(["--model", str(tiny_model), "--guide", str(missing), "--variants", "naive,percpos+gist",
                       "--out", str(out)])  # fmt: skip
    assert "no-such-guide" in str(stopped.value) and not out.exists()


def test_stage_archive_keeps_a_stage_compressed_and_brings_it_back(tmp_path: Path) -> None:
    from stage_archive import StageArchive

    from densekit.data import Run
    from densekit.eval.metrics import evaluate

    out, folder = tmp_path / "out", tmp_path / "archive"
    run, negatives, done = out / "runs" / "a.trec", out / "neg.jsonl", out / "runs" / "a.done.json"
    run.parent.mkdir(parents=True)
    # q1's d3 and d2 tie (trec_eval puts the larger id first); q2 is written out of score order
    run.write_text("q1 Q0 d1 1 0.9 x\nq1 Q0 d2 2 0.5 x\nq1 Q0 d3 3 0.5 x\nq2 Q0 d4 1 0.1 x\nq2 Q0 d5 2 0.7 x\n")
    negatives.write_text('{"qid": "q1"}\n' * 50)
    done.write_text('{"command": ["x"]}')
    archive = StageArchive(out, folder)
    assert not archive.restore(done, (run, negatives))  # the run folder has it: left alone
    archive.keep(done, (run, negatives))
    assert archive.has(done) and (folder / "neg.jsonl.gz").stat().st_size < negatives.stat().st_size
    qrels = {"q1": {"d2": 1}, "q2": {"d4": 1}}
    before, original = evaluate(qrels, Run.read_trec(run), ["ndcg@10", "mrr@10"]).metrics, negatives.read_text()
    shutil.rmtree(out)
    assert archive.restore(done, (run, negatives))
    assert negatives.read_text() == original and done.read_text() == '{"command": ["x"]}'
    assert run.read_text().splitlines()[:3] == ["q1 Q0 d1 1 1 x", "q1 Q0 d3 2 0.5 x", "q1 Q0 d2 3 0.333333 x"]
    assert evaluate(qrels, Run.read_trec(run), ["ndcg@10", "mrr@10"]).metrics == before
    assert not list(out.rglob("*.partial"))


def test_crossfit_join_keeps_the_full_files_order_and_refuses_overlaps(tmp_path: Path) -> None:
    import crossfit

    def mined(name: str, ids: list[str], written: int) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps({"query_id": q, "negatives": []}) + "\n" for q in ids))
        Path(f"{path}.config.json").write_text(json.dumps({"part": name}))
        stats = {"negatives_written": written, "sum_negative_score": written / 2, "removed": {"ce(0.0)": 1}}
        Path(f"{path}.stats.json").write_text(json.dumps(stats | {"mean_negative_score": 9.0}))
        return path

    order = mined("order.jsonl", ["b", "a", "c"], 3)
    parts = [mined("p0.jsonl", ["a"], 1), mined("p1.jsonl", ["c", "b"], 3)]
    result = crossfit.join(order, parts, tmp_path / "out.jsonl")
    assert [json.loads(line)["query_id"] for line in (tmp_path / "out.jsonl").open()] == ["b", "a", "c"]
    assert result["stats"] == {"negatives_written": 4, "sum_negative_score": 2.0, "removed": {"ce(0.0)": 2},
                               "mean_negative_score": 0.5}  # fmt: skip
    with pytest.raises(SystemExit, match="p1.jsonl:2: query 'b' is in two folds"):
        crossfit.join(order, [mined("p2.jsonl", ["b"], 1), parts[1]], tmp_path / "bad.jsonl")
    with pytest.raises(SystemExit, match="the folds miss 1 and add 0 queries"):
        crossfit.join(order, parts[1:], tmp_path / "bad.jsonl")
