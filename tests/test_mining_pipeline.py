"""The miner end to end on a SciFact subset: output contract, resume, guide, fusion with BM25, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from densekit.data import Run, load_dataset
from densekit.errors import DensekitError
from densekit.mining import (
    DenseScorer,
    HardNegativeMiner,
    PercPosFilter,
    RetrieverSource,
    ShiftFilter,
    UniformSampler,
    config_path,
    read_negatives,
    stats_path,
)
from densekit.mining.miner import checkpoint_path, partial_path
from densekit.negatives import NegativesRecord


@pytest.fixture(scope="module")
def dataset(scifact_small: Path):
    return load_dataset(scifact_small, split="test")


@pytest.fixture(scope="module")
def tiny_teacher(tiny_model: Path, dataset):
    from densekit.retriever.encoder import Encoder

    return DenseScorer(Encoder(tiny_model, device="cpu"), dataset.corpus, show_progress=False)


def check_contract(path: Path, dataset, negatives: int) -> list[NegativesRecord]:
    records = read_negatives(path)
    stats = json.loads(stats_path(path).read_text())
    assert len(records) == stats["queries_mined"] == len(dataset.queries) - stats["queries_without_positives"]
    short = 0
    for record in records:
        positives = {d for d, rel in dataset.qrels[record.query_id].items() if rel > 0}
        assert set(record.positives) == positives
        assert not positives & {n.id for n in record.negatives}
        assert record.query == dataset.queries[record.query_id]
        ranks = [n.rank for n in record.negatives]
        assert ranks == sorted(ranks)
        short += len(record.negatives) < negatives
    assert short == stats["queries_short"]
    assert sum(len(r.negatives) for r in records) == stats["negatives_written"]
    return records


def test_mine_writes_the_contract_and_statistics(tiny_teacher, dataset, tmp_path: Path) -> None:
    out = tmp_path / "neg.jsonl"
    result = HardNegativeMiner(tiny_teacher, negatives=4, depth=30, chunk_size=7).mine(dataset, out)
    records = check_contract(out, dataset, 4)
    stats = result.stats
    assert stats.candidates_seen == 30 * len(records)
    assert stats.candidates_seen == sum(stats.removed.values()) + stats.candidates_kept
    assert list(stats.removed) == ["positives", "percpos(0.95)"]
    config = json.loads(config_path(out).read_text())
    assert config["filters"] == [{"name": "positives"}, {"name": "percpos", "percentage": 0.95}]
    assert config["sampler"] == {"name": "top"} and config["negatives"] == 4 and config["depth"] == 30
    assert config["densekit_version"] and config["teacher"]["fingerprint"]
    assert not partial_path(out).exists() and not checkpoint_path(out).exists()
    # Every written negative passes PercPos against the lowest positive's teacher score.
    for record in records:
        pos = min(record.positive_scores["positive_scores"].values())
        assert all(n.teacher_score <= pos - 0.05 * abs(pos) + 1e-6 for n in record.negatives)
        assert all(n.guide_score is None for n in record.negatives)


def test_teacher_scores_are_the_models_cosine(tiny_teacher, dataset, tmp_path: Path) -> None:
    out = tmp_path / "neg.jsonl"
    HardNegativeMiner(tiny_teacher, filters=[], depth=10).mine(dataset, out)
    record = read_negatives(out)[0]
    encoder = tiny_teacher.encoder
    q = encoder.encode_queries([record.query], show_progress=False)[0]
    docs = [dataset.corpus.texts()[dataset.corpus.position(n.id)] for n in record.negatives]
    expected = encoder.encode_documents(docs, show_progress=False) @ q
    got = np.array([n.teacher_score for n in record.negatives])
    assert np.allclose(got, expected, atol=1e-5)
    # No filter and the top sampler: the negatives are the best-ranked candidates that are not positives.
    ranks = [n.rank for n in record.negatives]
    assert len(ranks) == 4 and ranks == sorted(ranks) and ranks[-1] <= 4 + len(record.positives)


def test_resume_after_interruption_writes_identical_file(tiny_teacher, dataset, tmp_path: Path) -> None:
    def miner() -> HardNegativeMiner:
        return HardNegativeMiner(
            tiny_teacher,
            filters=[ShiftFilter(1), PercPosFilter(0.9)],
            sampler=UniformSampler(),
            negatives=3,
            depth=25,
            seed=11,
            chunk_size=6,
        )

    whole = tmp_path / "whole.jsonl"
    miner().mine(dataset, whole, removed_out=tmp_path / "whole.removed.jsonl")

    out = tmp_path / "resumed.jsonl"

    class Interrupted(Exception):
        pass

    def stop_after_two_chunks(done: int) -> None:
        if done >= 12:
            raise Interrupted

    removed_out = tmp_path / "resumed.removed.jsonl"
    with pytest.raises(Interrupted):
        miner().mine(dataset, out, on_chunk=stop_after_two_chunks, removed_out=removed_out)
    assert not out.exists() and partial_path(out).exists() and partial_path(removed_out).exists()
    assert json.loads(checkpoint_path(out).read_text())["queries_done"] == 12
    with open(partial_path(out), "a", encoding="utf-8") as handle:
        handle.write('{"query_id": "half-written')  # a crash in the middle of the next chunk

    with open(partial_path(removed_out), "a", encoding="utf-8") as handle:
        handle.write('{"query_id": "half')

    with pytest.raises(DensekitError, match="different configuration"):
        other = HardNegativeMiner(tiny_teacher, negatives=3, depth=25, seed=12, chunk_size=6)
        other.mine(dataset, out, resume=True, removed_out=removed_out)
    with pytest.raises(DensekitError, match="removed candidates"):
        miner().mine(dataset, out, resume=True)

    result = miner().mine(dataset, out, resume=True, removed_out=removed_out)
    assert result.resumed_at == 12
    assert out.read_bytes() == whole.read_bytes()
    assert removed_out.read_bytes() == (tmp_path / "whole.removed.jsonl").read_bytes()
    resumed_stats = json.loads(stats_path(out).read_text())
    whole_stats = json.loads(stats_path(whole).read_text())
    for stats in (resumed_stats, whole_stats):
        stats.pop("seconds")
    assert resumed_stats == whole_stats


def test_restart_without_resume_discards_partial(tiny_teacher, dataset, tmp_path: Path, capsys) -> None:
    out = tmp_path / "neg.jsonl"
    partial_path(out).write_text("garbage\n")
    HardNegativeMiner(tiny_teacher, depth=10).mine(dataset, out)
    assert "discarding the unfinished run" in capsys.readouterr().err
    check_contract(out, dataset, 4)


def test_guide_filter_drops_what_the_guide_ranks_at_or_above_the_positive(
    tiny_teacher, minilm, dataset, tmp_path: Path
) -> None:
    guide = DenseScorer(minilm, dataset.corpus, show_progress=False)
    out, removed_out = tmp_path / "gist.jsonl", tmp_path / "gist.removed.jsonl"
    result = HardNegativeMiner(tiny_teacher, filters=[], guide=guide, depth=50).mine(
        dataset, out, removed_out=removed_out
    )
    records = check_contract(out, dataset, 4)
    assert result.stats.removed["guide(0.0)"] > 0
    for record in records:
        lowest = min(record.positive_scores["positive_guide_scores"].values())
        assert all(n.guide_score < lowest for n in record.negatives)
    # The removed-candidates file holds exactly what each filter removed, with both scores.
    removed = [json.loads(line) for line in removed_out.read_text().splitlines()]
    by_filter: dict[str, int] = {}
    for line in removed:
        lowest = min(line["positive_guide_scores"].values())
        for candidate in line["removed"]:
            by_filter[candidate["filter"]] = by_filter.get(candidate["filter"], 0) + 1
            if candidate["filter"] == "guide(0.0)":
                assert candidate["guide_score"] >= lowest and candidate["id"] not in line["positives"]
            else:
                assert candidate["id"] in line["positives"]
    assert by_filter == {k: v for k, v in result.stats.removed.items() if v}
    assert json.loads(config_path(out).read_text())["guide"]["model"] == "all-MiniLM-L6-v2"


class Bm25sRetriever:
    """A real lexical retriever (bm25s) keeping the Retriever protocol, as the BM25 source stand-in."""

    def __init__(self, corpus) -> None:
        import bm25s

        self.ids = corpus.ids
        self.model = bm25s.BM25()
        tokens = bm25s.tokenize(corpus.texts(), stopwords="en", show_progress=False)
        self.model.index(tokens, show_progress=False)

    def search(self, queries: dict[str, str], k: int) -> Run:
        import bm25s

        tokens = bm25s.tokenize(list(queries.values()), stopwords="en", show_progress=False)
        docs, scores = self.model.retrieve(tokens, k=k, show_progress=False)
        return Run(
            {
                q: [(self.ids[d], float(s)) for d, s in zip(docs[i], scores[i], strict=True)]
                for i, q in enumerate(queries)
            }
        )


@pytest.mark.parametrize("fusion", ["rrf", "union"])
def test_bm25_and_dense_sources_fused(tiny_teacher, dataset, tmp_path: Path, fusion: str) -> None:
    from densekit.mining import DenseSource

    bm25 = RetrieverSource(Bm25sRetriever(dataset.corpus), name="bm25")
    sources = [DenseSource(tiny_teacher, name="teacher"), bm25]
    out = tmp_path / f"{fusion}.jsonl"
    result = HardNegativeMiner(tiny_teacher, sources=sources, fusion=fusion, depth=20).mine(dataset, out)
    check_contract(out, dataset, 4)
    per_query = result.stats.candidates_seen / result.stats.queries_mined
    if fusion == "rrf":
        assert per_query == 20
    else:
        assert 20 < per_query <= 40  # the union of two top-20 lists
    config = json.loads(config_path(out).read_text())
    assert [s["name"] for s in config["sources"]] == ["teacher", "bm25"] and config["fusion"] == fusion


def test_cli_mine_json_and_errors(tiny_model: Path, scifact_small: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    def run(args: list[str]) -> tuple[int, str, str]:
        return run_cli(args, capsys, monkeypatch)

    out = tmp_path / "neg.jsonl"
    base = ["mine", str(scifact_small), "--split", "test", "--teacher", str(tiny_model), "--out", str(out)]
    code, stdout, _ = run(
        [
            *base,
            "--method",
            "shift,percpos",
            "--shift",
            "2",
            "--sampler",
            "weighted",
            "--temperature",
            "0.1",
            "--depth",
            "30",
            "--seed",
            "3",
            "--json",
        ]
    )
    assert code == 0
    info = json.loads(stdout)
    assert info["stats"]["queries"] == 20 and info["stats"]["removed"]["shift(2)"] > 0
    assert json.loads(config_path(out).read_text())["sampler"] == {"name": "weighted", "temperature": 0.1}
    check_contract(out, load_dataset(scifact_small, split="test"), 4)
    for bad, message in (
        [["--threshold", "0.3"], "--threshold is given"],
        [["--sampler", "best"], "unknown sampler"],
        [["--guide-margin", "0.1"], "no --guide"],
        [["--no-such-option"], "No such option"],
    ):
        code, _, err = run([*base, *bad])
        assert code == 2 and message in err and err.count("\n") == 1


def test_cli_mines_from_teacher_fused_with_a_saved_bm25_index(
    tiny_model: Path, scifact_small: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    index = tmp_path / "bm25.idx"
    for args in (
        ["index", "build", str(scifact_small), "--bm25", "--backend", "bm25s", "--out", str(index), "--quiet"],
        [
            "mine",
            str(scifact_small),
            "--split",
            "test",
            "--teacher",
            str(tiny_model),
            "--source",
            "teacher",
            "--source",
            str(index),
            "--fusion",
            "union",
            "--depth",
            "15",
            "--out",
            str(tmp_path / "neg.jsonl"),
            "--json",
        ],
    ):
        code, printed, err = run_cli(args, capsys, monkeypatch)
        assert code == 0, err
    info = json.loads(printed)
    check_contract(tmp_path / "neg.jsonl", load_dataset(scifact_small, split="test"), 4)
    config = json.loads(config_path(tmp_path / "neg.jsonl").read_text())
    assert [s["kind"] for s in config["sources"]] == ["dense", "retriever"]
    assert config["sources"][1]["class"] == "BM25Retriever" and config["fusion"] == "union"
    assert 15 < info["stats"]["candidates_seen"] / info["stats"]["queries_mined"] <= 30


@pytest.mark.slow
def test_full_scifact_train_mining_via_cli(scifact_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """`densekit mine scifact --split train --teacher all-MiniLM-L6-v2 --method percpos --percentage 0.95
    --negatives 4`: every one of the 809 queries has its negatives or is counted short in the statistics,
    and no negative is a labelled positive."""
    out = tmp_path / "neg.jsonl"
    code, printed, err = run_cli(
        [
            "mine",
            str(scifact_dir),
            "--split",
            "train",
            "--teacher",
            "all-MiniLM-L6-v2",
            "--method",
            "percpos",
            "--percentage",
            "0.95",
            "--negatives",
            "4",
            "--out",
            str(out),
            "--json",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    stats = json.loads(printed)["stats"]
    dataset = load_dataset(scifact_dir, split="train")
    assert stats["queries"] == len(dataset.queries) == 809
    records = check_contract(out, dataset, 4)
    assert len(records) + stats["queries_without_positives"] == 809
    complete = sum(len(r.negatives) == 4 for r in records)
    assert complete + stats["queries_short"] == len(records)
    assert complete > 700
