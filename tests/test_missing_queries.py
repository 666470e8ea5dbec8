"""One retrieval, one number (issue 21): a judged query without results counts as 0 on every path.

A SciFact subset gets one extra judged query whose words occur in no document, so BM25 returns
nothing for it: `densekit search --out` writes no line for it and says so, and `densekit eval` scores
the run file exactly as it scores the same BM25 retrieval in-process, under either rule.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from densekit.data import read_qrels

NO_HIT_QUERY = {"_id": "no-hit", "text": "xyzzyq plughw frobnicatez"}


@pytest.fixture(scope="module")
def with_unanswerable(scifact_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(shutil.copytree(scifact_small, tmp_path_factory.mktemp("unanswerable") / "data"))
    with open(folder / "queries.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(NO_HIT_QUERY) + "\n")
    qrels = folder / "qrels" / "test.tsv"
    a_doc = next(iter(next(iter(read_qrels(qrels).values()))))
    with open(qrels, "a", encoding="utf-8") as handle:
        handle.write(f"{NO_HIT_QUERY['_id']}\t{a_doc}\t1\n")
    return folder


@pytest.fixture(scope="module")
def bm25_run(with_unanswerable: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`densekit index build --bm25` then `densekit search --out` over the 21 judged queries."""
    work = tmp_path_factory.mktemp("bm25_run")
    monkeypatch = pytest.MonkeyPatch()
    try:
        code, _, err = _cli(
            [
                "index",
                "build",
                str(with_unanswerable),
                "--bm25",
                "--backend",
                "bm25s",
                "--out",
                str(work / "idx"),
                "--quiet",
            ],
            monkeypatch,
        )
        assert code == 0, err
        code, out, err = _cli(
            [
                "search",
                str(work / "idx"),
                "--queries",
                str(with_unanswerable),
                "--split",
                "test",
                "-k",
                "1000",
                "--out",
                str(work / "run.trec"),
                "--json",
            ],
            monkeypatch,
        )
        assert code == 0, err
    finally:
        monkeypatch.undo()
    return work / "run.trec", json.loads(out)


def _cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """`densekit ARGS` in-process for a module-scoped fixture (capsys is function-scoped)."""
    import contextlib
    import io
    import sys

    from densekit.cli import main

    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "argv", ["densekit", *args])
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_search_out_writes_nothing_for_a_query_without_hits_and_says_so(
    bm25_run, with_unanswerable, capsys, monkeypatch
) -> None:
    run_file, info = bm25_run
    assert info["queries_without_hits"] == 1
    query_ids = {line.split()[0] for line in run_file.read_text(encoding="utf-8").splitlines()}
    assert len(query_ids) == 20 and NO_HIT_QUERY["_id"] not in query_ids
    code, out, err = run_cli(
        [
            "search",
            str(run_file.parent / "idx"),
            "--queries",
            str(with_unanswerable),
            "--split",
            "test",
            "-k",
            "10",
            "--out",
            str(run_file.parent / "run10.trec"),
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert "1 query without hits" in " ".join((out + err).split())  # rich wraps long paths


def _eval(args: list[str], capsys, monkeypatch) -> dict:
    code, out, err = run_cli(
        ["eval", *args, "--split", "test", "--metrics", "ndcg@10,recall@100", "--json"], capsys, monkeypatch
    )
    assert code == 0, err
    return json.loads(out)


def test_run_file_and_in_process_bm25_give_one_number(bm25_run, with_unanswerable, capsys, monkeypatch) -> None:
    run_file, _ = bm25_run
    data = str(with_unanswerable)
    from_file = _eval([data, "--run", str(run_file)], capsys, monkeypatch)
    in_process = _eval([data, "--bm25", "--backend", "bm25s"], capsys, monkeypatch)
    for result in (from_file, in_process):
        assert (result["queries"], result["missing_queries"], result["missing_query_rule"]) == (21, 1, "zero")
    assert from_file["metrics"] == pytest.approx(in_process["metrics"], abs=1e-6)
    skipped = _eval([data, "--run", str(run_file), "--skip-missing-queries"], capsys, monkeypatch)
    assert (skipped["queries"], skipped["missing_queries"], skipped["missing_query_rule"]) == (20, 1, "skip")
    for metric, value in from_file["metrics"].items():
        assert value == pytest.approx(skipped["metrics"][metric] * 20 / 21, abs=1e-9)
    assert skipped["metrics"]["ndcg@10"] > from_file["metrics"]["ndcg@10"] > 0


def test_eval_text_output_names_the_rule(bm25_run, with_unanswerable, capsys, monkeypatch) -> None:
    run_file, _ = bm25_run
    code, out, err = run_cli(
        ["eval", str(with_unanswerable), "--run", str(run_file), "--split", "test"], capsys, monkeypatch
    )
    assert code == 0, err
    assert "21 queries, 1 without results counted as 0" in " ".join(out.split())
    code, out, err = run_cli(
        ["eval", str(with_unanswerable), "--run", str(run_file), "--split", "test", "--skip-missing-queries"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert "20 queries, 1 without results skipped" in " ".join(out.split())
