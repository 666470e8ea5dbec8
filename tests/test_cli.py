"""The CLI end to end on a SciFact subset with a tiny model: build, search, eval, data, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli, run_cli_subprocess


@pytest.fixture(scope="module")
def built_index(tiny_model: Path, scifact_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from densekit.data import load_dataset
    from densekit.retriever.dense import DenseRetriever
    from densekit.retriever.encoder import Encoder

    out = tmp_path_factory.mktemp("cli") / "tiny.idx"
    DenseRetriever.build(Encoder(tiny_model, device="cpu"), load_dataset(scifact_small).corpus).save(out)
    return out


def test_index_build_json(tiny_model, scifact_small, tmp_path, capsys, monkeypatch) -> None:
    code, out, _ = run_cli(
        ["index", "build", str(scifact_small), "--model", str(tiny_model), "--out", str(tmp_path / "i"), "--json"],
        capsys,
        monkeypatch,
    )
    assert code == 0
    info = json.loads(out)
    assert info["documents"] == len((scifact_small / "corpus.jsonl").read_text().splitlines())
    assert (tmp_path / "i" / "manifest.json").is_file()
    assert (tmp_path / "i" / "docs.jsonl").is_file()  # texts stored by default, for search output and RAG
    code, out, _ = run_cli(["search", str(tmp_path / "i"), "vitamin d", "-k", "3", "--json"], capsys, monkeypatch)
    hits = json.loads(out)["hits"]
    assert code == 0 and all(h["text"] for h in hits) and all("title" in h for h in hits)


def test_search_single_query_json(built_index, capsys, monkeypatch) -> None:
    code, out, _ = run_cli(
        ["search", str(built_index), "vitamin d and multiple sclerosis", "-k", "5", "--json"], capsys, monkeypatch
    )
    assert code == 0
    hits = json.loads(out)["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(hits[i]["score"] >= hits[i + 1]["score"] for i in range(4))


def test_search_queries_to_run_then_eval_run(built_index, scifact_small, tmp_path, capsys, monkeypatch) -> None:
    run_path = tmp_path / "run.trec"
    code, _, _ = run_cli(
        [
            "search",
            str(built_index),
            "--queries",
            str(scifact_small),
            "--split",
            "test",
            "-k",
            "100",
            "--out",
            str(run_path),
            "--json",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0
    lines = run_path.read_text().splitlines()
    assert len(lines) == 20 * 100 and lines[0].split()[3] == "1"
    code, out, _ = run_cli(["eval", str(scifact_small), "--run", str(run_path), "--json"], capsys, monkeypatch)
    from_run = json.loads(out)
    code2, out2, _ = run_cli(
        ["eval", str(scifact_small), "--index", str(built_index), "--depth", "100", "--json"], capsys, monkeypatch
    )
    from_index = json.loads(out2)
    assert code == code2 == 0
    assert set(from_run["metrics"]) == {"ndcg@10", "recall@100", "map@10", "mrr@10", "p@10"}
    for name, value in from_run["metrics"].items():
        assert isinstance(value, float)
        assert value == pytest.approx(from_index["metrics"][name], abs=1e-6)


def test_eval_model_writes_results_with_per_query(tiny_model, scifact_small, tmp_path, capsys, monkeypatch) -> None:
    out_path = tmp_path / "results.json"
    code, out, _ = run_cli(
        [
            "eval",
            str(scifact_small),
            "--model",
            str(tiny_model),
            "--split",
            "test",
            "--out",
            str(out_path),
            "--metrics",
            "ndcg@10,recall@100",
            "--json",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0
    printed = json.loads(out)
    saved = json.loads(out_path.read_text())
    assert printed["metrics"] == saved["metrics"]
    assert len(saved["per_query"]) == 20
    assert saved["config"]["pooling"] == "mean" and "versions" in saved


def test_data_list_and_check(scifact_small, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DENSEKIT_DATA", str(scifact_small.parent))
    code, out, _ = run_cli(["data", "list", "--json"], capsys, monkeypatch)
    assert code == 0 and scifact_small.name in [d["name"] for d in json.loads(out)["datasets"]]
    code, out, _ = run_cli(["data", "check", str(scifact_small), "--json"], capsys, monkeypatch)
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["splits"]["test"]["queries_judged"] == 20


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "no-such-dataset", "--model", "x"], "dataset 'no-such-dataset' not found"),
        (["eval", "{small}", "--split", "dev", "--run", "r"], "unknown split 'dev'"),
        (["eval", "{small}"], "exactly one of --model, --index or --run"),
        (["eval", "{small}", "--run", "{small}/missing.trec"], "run file not found"),
        (["eval", "{small}", "--run", "x", "--metrics", "bleu@4"], "unknown metric"),
        (["search", "{small}", "query"], "manifest.json: missing"),
        (["eval", "{small}", "--frobnicate"], "No such option"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(args, message, scifact_small, capsys, monkeypatch) -> None:
    args = [a.replace("{small}", str(scifact_small)) for a in args]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out == ""


def test_malformed_corpus_through_real_entry_point(tmp_path: Path) -> None:
    root = tmp_path / "broken"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": \n')
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "q"}\n')
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    done = run_cli_subprocess(["index", "build", str(root), "--out", str(tmp_path / "idx")])
    assert done.returncode == 2
    assert f"{root / 'corpus.jsonl'}:2: malformed JSON" in done.stderr
    assert not (tmp_path / "idx").exists()


def test_index_build_no_store_texts_writes_no_texts(tiny_model, scifact_small, tmp_path, capsys, monkeypatch):
    args = ["index", "build", str(scifact_small), "--model", str(tiny_model), "--quiet"]
    assert run_cli([*args, "--out", str(tmp_path / "bare"), "--no-store-texts"], capsys, monkeypatch)[0] == 0
    assert not (tmp_path / "bare" / "docs.jsonl").exists()
    assert run_cli([*args, "--out", str(tmp_path / "full")], capsys, monkeypatch)[0] == 0
    assert (tmp_path / "full" / "docs.jsonl").is_file()
