"""The index-at-scale commands end to end (in-process, the real entry point, the tiny random BERT on a
SciFact subset): `index build` with a preset, training sample and search defaults; `index info`;
`index set-params`; `search --nprobe/--ef-search`; `index remove` and `index update` keeping the
stored texts in step; sharded `index encode` resuming, then `index from-shards`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import run_cli


@pytest.fixture
def ivf_index(tiny_model: Path, scifact_small: Path, tmp_path: Path, capsys, monkeypatch) -> Path:
    out = tmp_path / "ivf.idx"
    code, _, err = run_cli(
        [
            "index",
            "build",
            str(scifact_small),
            "--model",
            str(tiny_model),
            "--out",
            str(out),
            "--factory",
            "ivf-flat",
            "--train-sample",
            "200",
            "--nprobe",
            "3",
            "--json",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    return out


def test_build_info_and_search_parameters(ivf_index, capsys, monkeypatch):
    code, out, _ = run_cli(["index", "info", str(ivf_index), "--json"], capsys, monkeypatch)
    info = json.loads(out)
    assert code == 0
    assert info["factory"] == "IVF16,Flat" and info["preset"] == "ivf-flat" and info["nlist"] == 16
    assert info["train_sample"] == 200 and info["search_params"] == {"nprobe": 3}
    assert info["faiss_classes"] == ["IndexIVFFlat"] and info["dim"] == 32
    assert info["index_bytes"] > info["count"] * 32 * 4  # full vectors plus ids and centroids
    assert info["model"]["pooling"] == "mean"

    code, out, _ = run_cli(["index", "set-params", str(ivf_index), "--nprobe", "16", "--json"], capsys, monkeypatch)
    assert code == 0 and json.loads(out)["search_params"] == {"nprobe": 16}
    code, out, _ = run_cli(["index", "info", str(ivf_index), "--json"], capsys, monkeypatch)
    assert json.loads(out)["search_params"] == {"nprobe": 16}

    def hits(*extra: str) -> list[str]:
        code, out, err = run_cli(
            ["search", str(ivf_index), "vitamin d and the immune system", "-k", "10", "--json", *extra],
            capsys,
            monkeypatch,
        )
        assert code == 0, err
        return [h["doc_id"] for h in json.loads(out)["hits"]]

    exhaustive = hits()  # nprobe 16 of 16 lists
    assert hits("--nprobe", "16") == exhaustive
    assert len(hits("--nprobe", "1")) <= 10
    code, _, err = run_cli(["search", str(ivf_index), "q", "--ef-search", "32"], capsys, monkeypatch)
    assert code == 2 and "efSearch=32 does not apply" in err
    code, _, err = run_cli(["index", "set-params", str(ivf_index), "--nprobe", "0"], capsys, monkeypatch)
    assert code == 2 and "positive integer" in err
    from densekit.index.gpu import gpu_count

    if gpu_count() == 0:  # the CPU fallback is announced; an explicit GPU request is an error
        code, out, err = run_cli(
            [
                "search",
                str(ivf_index),
                "vitamin d and the immune system",
                "-k",
                "10",
                "--json",
                "--index-device",
                "auto",
            ],
            capsys,
            monkeypatch,
        )
        assert code == 0 and "no GPU visible to FAISS" in err
        assert [h["doc_id"] for h in json.loads(out)["hits"]] == exhaustive
        code, _, err = run_cli(["search", str(ivf_index), "q", "--index-device", "gpu"], capsys, monkeypatch)
        assert code == 2 and "FAISS sees no GPU" in err


def test_remove_and_update_keep_texts_in_step(ivf_index, tmp_path, capsys, monkeypatch):
    query = ["search", str(ivf_index), "vitamin d and the immune system", "-k", "5", "--nprobe", "16", "--json"]
    code, out, _ = run_cli(query, capsys, monkeypatch)
    top = [h["doc_id"] for h in json.loads(out)["hits"]]
    code, out, err = run_cli(["index", "remove", str(ivf_index), *top[:2], "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["removed"] == 2
    code, out, _ = run_cli(query, capsys, monkeypatch)
    after = [h["doc_id"] for h in json.loads(out)["hits"]]
    assert not set(after) & set(top[:2]) and after[:3] == top[2:5]
    code, _, err = run_cli(["index", "remove", str(ivf_index), top[0]], capsys, monkeypatch)
    assert code == 2 and "not in the index" in err

    docs = tmp_path / "new.jsonl"
    docs.write_text(
        json.dumps({"_id": top[2], "title": "Replaced", "text": "vitamin d and the immune system"})
        + "\n"
        + json.dumps({"_id": "brand-new", "title": "New", "text": "a new document"})
        + "\n"
    )
    code, out, err = run_cli(
        ["index", "update", str(ivf_index), str(docs), "--device", "cpu", "--json"], capsys, monkeypatch
    )
    assert code == 0, err
    assert json.loads(out) == {"index": str(ivf_index), "replaced": 1, "added": 1}
    code, out, _ = run_cli(query, capsys, monkeypatch)
    first = json.loads(out)["hits"][0]
    assert first["doc_id"] == top[2] and first["title"] == "Replaced"  # the exact text of the query, stored
    code, out, _ = run_cli(["index", "info", str(ivf_index), "--json"], capsys, monkeypatch)
    info = json.loads(out)
    assert info["count"] == info["documents"]["count"]  # docs.jsonl holds exactly the indexed documents
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "x", "text": 3}\n')
    code, _, err = run_cli(["index", "update", str(ivf_index), str(bad)], capsys, monkeypatch)
    assert code == 2 and "bad.jsonl:1" in err


def test_sharded_encode_resumes_then_builds(tiny_model, scifact_small, tmp_path, capsys, monkeypatch):
    shards = tmp_path / "shards"
    args = [
        "index",
        "encode",
        str(scifact_small),
        "--model",
        str(tiny_model),
        "--out",
        str(shards),
        "--shard-size",
        "100",
        "--device",
        "cpu",
        "--json",
    ]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    report = json.loads(out)
    assert report["shards"] == -(-report["documents"] // 100) and report["world_size"] == 1
    (shards / "shard-00001.json").unlink()  # as if interrupted while writing shard 1
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0 and "already encoded; resuming" in err
    code, out, err = run_cli(
        [
            "index",
            "from-shards",
            str(shards),
            "--out",
            str(tmp_path / "idx"),
            "--factory",
            "hnsw",
            "--ef-search",
            "20",
            "--texts",
            str(scifact_small),
            "--json",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert json.loads(out)["search_params"] == {"efSearch": 20}
    code, out, err = run_cli(
        ["search", str(tmp_path / "idx"), "vitamin d", "-k", "3", "--ef-search", "50", "--json"], capsys, monkeypatch
    )
    assert code == 0, err
    assert len(json.loads(out)["hits"]) == 3 and json.loads(out)["hits"][0]["text"]
    # Coarse 4-bit PQ codes re-ranked exactly from the shards give the exact (Flat) answer.
    for factory, name in (("Flat", "flat"), ("PQ4x4", "pq")):
        code, _, err = run_cli(
            ["index", "from-shards", str(shards), "--out", str(tmp_path / name), "--factory", factory, "--json"],
            capsys,
            monkeypatch,
        )
        assert code == 0, err
    query = ["vitamin d deficiency", "-k", "10", "--json"]
    hits = {}
    rerank_all = ["--rerank-vectors", str(shards), "--rerank-candidates", "1000"]  # every document
    for name, extra in (("flat", []), ("pq", []), ("pq", rerank_all)):
        code, out, err = run_cli(["search", str(tmp_path / name), *query, *extra], capsys, monkeypatch)
        assert code == 0, err
        hits[(name, bool(extra))] = [h["doc_id"] for h in json.loads(out)["hits"]]
    assert hits[("pq", True)] == hits[("flat", False)] != hits[("pq", False)]
    code, _, err = run_cli(
        ["search", str(tmp_path / "pq"), *query, "--rerank-vectors", str(tmp_path / "x.npy")], capsys, monkeypatch
    )
    assert code == 2 and "x.npy: expected a .npy file" in err
    code, _, err = run_cli(
        [
            "index",
            "encode",
            str(scifact_small),
            "--model",
            str(tiny_model),
            "--out",
            str(shards),
            "--shard-size",
            "50",
            "--device",
            "cpu",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "shard_size differ" in err


def test_ivf_pqr_build_search_k_factor_and_set_params(tiny_model, scifact_dir, tmp_path, capsys, monkeypatch):
    from conftest import write_subset

    corpus = write_subset(scifact_dir, tmp_path / "scifact-600", n_queries=5, n_distractors=600)  # PQ: 256 centroids
    out = tmp_path / "pqr.idx"
    code, _, err = run_cli(
        [
            "index",
            "build",
            str(corpus),
            "--model",
            str(tiny_model),
            "--out",
            str(out),
            "--factory",
            "ivf-pqr",
            "--nprobe",
            "16",
            "--k-factor",
            "8",
            "--json",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    code, info, _ = run_cli(["index", "info", str(out), "--json"], capsys, monkeypatch)
    info = json.loads(info)
    assert info["faiss_classes"][-1] == "IndexIVFPQR" and info["search_params"] == {"nprobe": 16, "k_factor": 8}
    code, res, err = run_cli(
        ["search", str(out), "vitamin d and the immune system", "-k", "5", "--k-factor", "32", "--json"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    scores = [h["score"] for h in json.loads(res)["hits"]]
    assert len(scores) == 5 and all(-1.01 <= s <= 1.01 for s in scores)  # inner products of unit vectors
    assert scores == sorted(scores, reverse=True)
    code, res, _ = run_cli(["index", "set-params", str(out), "--k-factor", "4", "--json"], capsys, monkeypatch)
    assert code == 0 and json.loads(res)["search_params"] == {"nprobe": 16, "k_factor": 4}
    code, _, err = run_cli(["index", "set-params", str(out), "--ef-search", "4"], capsys, monkeypatch)
    assert code == 2 and "efSearch=4 does not apply" in err
