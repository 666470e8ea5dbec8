"""BEIR loading, validation (every bad-input case names file and line), resolution, download, runs."""

from __future__ import annotations

import gzip
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from densekit.data import (
    DataWarning,
    Run,
    load_dataset,
    read_qrels,
    resolve_dataset,
)
from densekit.download import download_dataset
from densekit.errors import DensekitError, InputError, IntegrityError
from densekit.io import md5_file


def make_beir(
    root: Path,
    corpus: list[str] | None = None,
    queries: list[str] | None = None,
    qrels: str | None = None,
    split: str = "test",
) -> Path:
    """Write a small BEIR folder from raw lines (so malformed content can be written verbatim)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    corpus = (
        corpus
        if corpus is not None
        else [
            json.dumps({"_id": "d1", "title": "Scurvy", "text": "Vitamin C deficiency causes scurvy."}),
            json.dumps({"_id": "d2", "title": "", "text": "Rickets comes from a lack of vitamin D."}),
            json.dumps({"_id": "d3", "title": "Iron", "text": "Anaemia follows iron deficiency."}),
        ]
    )
    queries = (
        queries
        if queries is not None
        else [
            json.dumps({"_id": "q1", "text": "what causes scurvy"}),
            json.dumps({"_id": "q2", "text": "vitamin D and bones"}),
            json.dumps({"_id": "q3", "text": "unjudged query"}),
        ]
    )
    qrels = qrels if qrels is not None else "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n"
    (root / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (root / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (root / "qrels" / f"{split}.tsv").write_text(qrels)
    return root


def test_load_valid_folder(tmp_path: Path) -> None:
    ds = load_dataset(make_beir(tmp_path / "mini"), split="test")
    assert ds.corpus.ids == ["d1", "d2", "d3"]
    assert ds.queries == {"q1": "what causes scurvy", "q2": "vitamin D and bones"}  # only judged ones
    assert ds.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}}
    assert ds.corpus.texts()[0] == "Scurvy Vitamin C deficiency causes scurvy."
    assert ds.corpus.texts()[1] == "Rickets comes from a lack of vitamin D."  # empty title: no leading space


def test_gzipped_files_load(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "gz")
    for name in ("corpus.jsonl", "queries.jsonl"):
        data = (root / name).read_bytes()
        (root / name).unlink()
        with gzip.open(root / f"{name}.gz", "wb") as handle:
            handle.write(data)
    assert len(load_dataset(root, split="test").corpus) == 3


@pytest.mark.parametrize(
    ("corpus_line", "expected"),
    [
        ('{"_id": "d9", "text": "unterminated', "malformed JSON"),
        ('{"title": "no id", "text": "x"}', 'missing "_id"'),
        ('{"_id": "d1", "text": "again"}', "duplicate \"_id\" 'd1' (first on line 1)"),
        ('["a", "list"]', "expected a JSON object"),
        ('{"_id": "d9", "text": 42}', '"text" must be a string'),
    ],
)
def test_bad_corpus_line_names_file_and_line(tmp_path: Path, corpus_line: str, expected: str) -> None:
    good = json.dumps({"_id": "d1", "title": "", "text": "fine"})
    root = make_beir(tmp_path / "bad", corpus=[good, corpus_line])
    with pytest.raises(InputError) as info:
        load_dataset(root)
    assert info.value.line == 2
    assert info.value.path.endswith("corpus.jsonl")
    assert expected in str(info.value)
    assert str(info.value).startswith(f"{root / 'corpus.jsonl'}:2:")


def test_duplicate_query_id(tmp_path: Path) -> None:
    root = make_beir(
        tmp_path / "dupq", queries=[json.dumps({"_id": "q1", "text": "a"}), json.dumps({"_id": "q1", "text": "b"})]
    )
    with pytest.raises(InputError, match=r"queries.jsonl:2: duplicate"):
        load_dataset(root)


@pytest.mark.parametrize(
    ("qrels", "line", "expected"),
    [
        ("qid\tdocid\trel\nq1\td1\t1\n", 1, "header must be"),
        ("query-id\tcorpus-id\tscore\nq1\td1\n", 2, "expected 3 tab-separated fields"),
        ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", 2, "score must be an integer"),
        ("query-id\tcorpus-id\tscore\nq1 d1 1\n", 2, "expected 3 tab-separated fields"),
    ],
)
def test_bad_qrels(tmp_path: Path, qrels: str, line: int, expected: str) -> None:
    root = make_beir(tmp_path / "badq", qrels=qrels)
    with pytest.raises(InputError) as info:
        load_dataset(root, split="test")
    assert info.value.line == line
    assert info.value.path.endswith("test.tsv")
    assert expected in str(info.value)


def test_qrels_without_header_are_read(tmp_path: Path) -> None:
    path = tmp_path / "q.tsv"
    path.write_text("q1\td1\t2\nq1\td2\t0\n")
    assert read_qrels(path) == {"q1": {"d1": 2, "d2": 0}}


def test_unknown_split_lists_available(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "splits")
    with pytest.raises(DensekitError, match=r"unknown split 'dev'; available splits: test"):
        load_dataset(root, split="dev")


def test_dangling_qrels_are_counted_and_warned(tmp_path: Path) -> None:
    qrels = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tghost\t1\nq404\td2\t1\n"
    root = make_beir(tmp_path / "dangling", qrels=qrels)
    with pytest.warns(DataWarning, match=r"1 judged queries are not in queries.jsonl and 1 judged documents"):
        ds = load_dataset(root, split="test")
    assert ds.report.unknown_queries == 1 and ds.report.unknown_docs == 1
    assert set(ds.queries) == {"q1"}


def test_missing_corpus_file(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "nocorpus")
    (root / "corpus.jsonl").unlink()
    with pytest.raises(InputError, match="corpus.jsonl: missing"):
        load_dataset(root)


def test_resolution_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_beir(tmp_path / "store" / "mini")
    monkeypatch.setenv("DENSEKIT_DATA", f"/nonexistent:{tmp_path / 'store'}")
    assert resolve_dataset("mini") == tmp_path / "store" / "mini"
    with pytest.raises(DensekitError, match="dataset 'nope' not found"):
        resolve_dataset("nope")


def test_shared_scifact_counts(scifact_dir: Path) -> None:
    ds = load_dataset(scifact_dir, split="test")
    assert len(ds.corpus) == 5183
    assert len(ds.queries) == 300
    assert sum(len(v) for v in ds.qrels.values()) == 339
    assert ds.report.ok


def _zip_folder(folder: Path, archive: Path, inner: str) -> None:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{inner}/{path.relative_to(folder)}")


def test_download_verifies_md5_and_unpacks(tmp_path: Path) -> None:
    source = make_beir(tmp_path / "src")
    archive = tmp_path / "mini.zip"
    _zip_folder(source, archive, "mini")
    target = download_dataset("mini", tmp_path / "data", url=str(archive), md5=md5_file(archive))
    assert load_dataset(target, split="test").qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}}


def test_download_rejects_wrong_md5_and_leaves_nothing(tmp_path: Path) -> None:
    source = make_beir(tmp_path / "src")
    archive = tmp_path / "mini.zip"
    _zip_folder(source, archive, "mini")
    with pytest.raises(IntegrityError, match="does not match the published"):
        download_dataset("mini", tmp_path / "data", url=str(archive), md5="0" * 32)
    assert not (tmp_path / "data" / "mini").exists()


def test_download_unknown_checksum_needs_explicit_choice(tmp_path: Path) -> None:
    with pytest.raises(DensekitError, match="no published md5"):
        download_dataset("mystery", tmp_path, url=str(tmp_path / "x.zip"))


def test_download_of_official_name_uses_published_md5(tmp_path: Path) -> None:
    # A local archive under an official name is checked against the md5 that BEIR publishes.
    source = make_beir(tmp_path / "src")
    archive = tmp_path / "scifact.zip"
    _zip_folder(source, archive, "scifact")
    with pytest.raises(IntegrityError, match="5f7d1de60b170fc8027bb7898e2efca1"):
        download_dataset("scifact", tmp_path / "data", url=str(archive))


def test_run_roundtrip_and_validation(tmp_path: Path) -> None:
    run = Run.from_scores({"q1": {"d1": 0.5, "d2": 0.9}, "q2": {"d3": -1.0}})
    assert run["q1"][0] == ("d2", 0.9)
    path = tmp_path / "run.trec"
    run.write_trec(path)
    assert Run.read_trec(path) == run
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 two 0.4 tag\n")
    with pytest.raises(InputError, match=r"bad.trec:2: rank must be an integer"):
        Run.read_trec(bad)
    bad.write_text("q1 Q0 d1 1 0.5\n")
    with pytest.raises(InputError, match=r"bad.trec:1: expected 6 fields"):
        Run.read_trec(bad)


def test_trec_keeps_scores_that_differ_below_six_decimals(tmp_path: Path) -> None:
    # A reranker's near-equal scores: rounding them would turn their order into a tie broken by doc id.
    import numpy as np

    close = {"q1": {"a": 0.1234561, "b": 0.1234569, "c": float(np.float32(1e-9))}}
    run = Run.from_scores(close)
    run.write_trec(tmp_path / "run.trec")
    assert Run.read_trec(tmp_path / "run.trec") == run
    assert [doc for doc, _ in Run.read_trec(tmp_path / "run.trec")["q1"]] == ["b", "a", "c"]


def test_copy_of_shared_data_is_not_modified(scifact_small: Path, tmp_path: Path) -> None:
    # The subset fixture copies files; loading must never write into a data folder.
    before = sorted(p.name for p in scifact_small.rglob("*"))
    load_dataset(scifact_small, split="test")
    assert sorted(p.name for p in scifact_small.rglob("*")) == before
    shutil.copytree(scifact_small, tmp_path / "copy")


def test_fingerprint_digests_unchanged() -> None:
    """Embedding caches are keyed by these digests: the values were computed with the three functions
    that `densekit.data.fingerprint` replaced (Corpus.fingerprint, mining's queries_fingerprint and
    the MTEB adapter's text digest), so a change here would orphan every existing cache."""
    from densekit.data import Corpus, fingerprint

    corpus = Corpus(["d1", "d2"], ["Title", ""], ["text one", "Lp[a] é"])
    assert corpus.fingerprint() == "2d3d20755b215354bc973712e1b62c1316e38ba9451ec3f6b577ca89066ba476"
    assert fingerprint(["q1", "q2"], ["what?", "ünïcode"]) == (
        "8fb78a6ebe3d3b2a6304deb95881cd66132fc7a557e8f93673c12d9e58e15768"
    )
    assert fingerprint(["a", "b c", ""]) == "cdecc7ce15716cf7f3b637aef821efe6c2d1f69f2d21d088939ee7701a990bee"
    with pytest.raises(ValueError):
        fingerprint(["q1"], [])  # parallel columns must have equal lengths
