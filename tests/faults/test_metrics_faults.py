"""Silent or misleading metrics (issue 16, item 7): each is now a one-line error, exit 2, naming the file.

- an empty run file; a run whose query ids match none of the judged queries;
- qrels with only the header (and `data check` no longer calls them OK);
- `nan`/`inf` scores in a TREC run file (file and line), and non-finite scores from a Retriever;
- a qrels row repeated with a conflicting grade (both lines named); an exact repeat is accepted.

Every case runs the real `densekit eval` entry point on a SciFact subset (tests/conftest.py).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from densekit.data import QrelsReport, Run, check_qrels, load_dataset, read_qrels
from densekit.errors import DensekitError, InputError
from densekit.eval.harness import evaluate_retriever
from densekit.eval.metrics import evaluate


@pytest.fixture()
def dataset_copy(scifact_small: Path, tmp_path: Path) -> Path:
    """A private copy of the SciFact subset whose qrels a test may damage."""
    return Path(shutil.copytree(scifact_small, tmp_path / "scifact_copy"))


def _qrels_rows(folder: Path) -> list[str]:
    return (folder / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()


def _a_run_line(folder: Path) -> str:
    query_id, doc_id, _ = _qrels_rows(folder)[1].split("\t")
    return f"{query_id} Q0 {doc_id} 1 1.5 t\n"


def _eval_run(folder: Path, run: Path, capsys, monkeypatch) -> tuple[int, str, str]:
    return run_cli(["eval", str(folder), "--run", str(run), "--split", "test", "--json"], capsys, monkeypatch)


def _assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2, (code, out, err)
    assert out == ""  # no metrics printed
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_empty_run_file(scifact_small: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    run = tmp_path / "empty.trec"
    run.write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="empty run file"):
        Run.read_trec(run)
    code, out, err = _eval_run(scifact_small, run, capsys, monkeypatch)
    _assert_one_line_error(code, out, err, str(run), "empty run file")


def test_run_matching_no_judged_query(scifact_small: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    run = tmp_path / "other.trec"
    run.write_text("nope-1 Q0 d1 1 2.0 t\nnope-2 Q0 d2 1 1.0 t\n", encoding="utf-8")
    code, out, err = _eval_run(scifact_small, run, capsys, monkeypatch)
    _assert_one_line_error(code, out, err, str(run), "none of the 20 judged queries", "'nope-1'")
    # The same in memory (no file to name) is a DensekitError, and so is a run of only empty rankings.
    qrels = load_dataset(scifact_small, split="test").qrels
    with pytest.raises(DensekitError, match="none of the 20 judged queries"):
        evaluate(qrels, Run.read_trec(run).to_dict())
    with pytest.raises(DensekitError, match="none of the 20 judged queries"):
        evaluate(qrels, Run({q: [] for q in qrels}))


def test_header_only_qrels(dataset_copy: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    qrels_file = dataset_copy / "qrels" / "test.tsv"
    run = tmp_path / "run.trec"
    run.write_text(_a_run_line(dataset_copy), encoding="utf-8")
    qrels_file.write_text("query-id\tcorpus-id\tscore\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="no judgements"):
        read_qrels(qrels_file)
    code, out, err = _eval_run(dataset_copy, run, capsys, monkeypatch)
    _assert_one_line_error(code, out, err, str(qrels_file), "no judgements")
    code, out, err = run_cli(["data", "check", str(dataset_copy), "--json"], capsys, monkeypatch)
    assert code != 0 and '"ok": true' not in out, (code, out, err)
    assert str(qrels_file) in err or "no judgements" in out
    # Qrels built in memory: the cross-check is not OK, and evaluating them is an error.
    ds = load_dataset(dataset_copy, split=None)
    report = check_qrels({}, ds.queries, ds.corpus)
    assert isinstance(report, QrelsReport) and not report.ok
    with pytest.raises(DensekitError, match="qrels are empty"):
        evaluate({}, Run.read_trec(run))


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_non_finite_score_in_run_file(scifact_small: Path, tmp_path: Path, capsys, monkeypatch, bad: str) -> None:
    good = _a_run_line(scifact_small)
    query_id = good.split()[0]
    run = tmp_path / "bad.trec"
    run.write_text(good + f"{query_id} Q0 other-doc 2 {bad} t\n", encoding="utf-8")
    with pytest.raises(InputError, match="finite") as caught:
        Run.read_trec(run)
    assert caught.value.line == 2
    code, out, err = _eval_run(scifact_small, run, capsys, monkeypatch)
    _assert_one_line_error(code, out, err, f"{run}:2:", "finite")


class _NonFiniteRetriever:
    """A Retriever (the protocol densekit's retrievers keep) whose scores are NaN for one query."""

    def search(self, queries: dict[str, str], k: int) -> Run:
        ids = iter(queries)
        first = next(ids)
        run = Run({q: [("a", 2.0), ("b", 1.0)] for q in ids})
        run[first] = [("a", math.nan), ("b", 1.0)]
        return run


def test_non_finite_score_from_a_retriever(scifact_small: Path) -> None:
    ds = load_dataset(scifact_small, split="test")
    with pytest.raises(DensekitError, match="not a finite number"):
        evaluate_retriever(_NonFiniteRetriever(), ds, ["ndcg@10", "mrr@10"])
    with pytest.raises(DensekitError, match="not a finite number"):
        evaluate(ds.qrels, {next(iter(ds.qrels)): {"x": math.inf}})


def test_qrels_row_repeated_with_a_conflicting_grade(dataset_copy: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    qrels_file = dataset_copy / "qrels" / "test.tsv"
    rows = _qrels_rows(dataset_copy)
    query_id, doc_id, grade = rows[1].split("\t")
    run = tmp_path / "run.trec"
    run.write_text(_a_run_line(dataset_copy), encoding="utf-8")
    # An exact repeat is accepted and changes nothing.
    qrels_file.write_text("\n".join([*rows, rows[1]]) + "\n", encoding="utf-8")
    assert read_qrels(qrels_file)[query_id] == {doc_id: int(grade)}
    # The same pair with another grade: an error naming the line (and the first one).
    conflict_line = len(rows) + 1
    qrels_file.write_text("\n".join([*rows, f"{query_id}\t{doc_id}\t{int(grade) + 1}"]) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="on line 2") as caught:
        read_qrels(qrels_file)
    assert caught.value.line == conflict_line
    code, out, err = _eval_run(dataset_copy, run, capsys, monkeypatch)
    _assert_one_line_error(code, out, err, f"{qrels_file}:{conflict_line}:", repr(doc_id), "on line 2")
