"""Matryoshka (issue 18 item 4): the loss is the base objective summed over re-normalised prefixes (InfoNCE,
GIST, distillation; GradCache gives the plain path's gradients), `--truncate-dim` encodes the prefix
re-normalised, the embedding cache and the index manifest keep dimensions apart, a truncated index reopens
truncated, and bad values are one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli

from densekit.errors import DensekitError
from densekit.retriever.train.config import LossConfig
from densekit.retriever.train.distill import DistillInputs
from densekit.retriever.train.losses import GISTLoss, InfoNCELoss, LossInputs
from densekit.retriever.train.matryoshka import MatryoshkaLoss, parse_dims
from densekit.retriever.train.objective import build_objective


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def _hand_infonce(q: torch.Tensor, d: torch.Tensor, scale: float) -> float:
    """Mean over queries of -log softmax(scale * q.d)[positive], query i's positive being document i."""
    logits = scale * (q @ d.T)
    return float(-(logits.diagonal() - logits.logsumexp(dim=1)).mean())


def test_loss_equals_sum_of_infonce_over_renormalised_prefixes() -> None:
    q, d = _unit(4, 16, 1), _unit(8, 16, 2)
    inputs = LossInputs(torch.arange(4), torch.zeros(4, 8, dtype=torch.bool))
    loss = build_objective(LossConfig(matryoshka_dims="16,8,4", matryoshka_weights="1,0.5,2"), dim=16)
    assert isinstance(loss, MatryoshkaLoss) and loss.dims == (16, 8, 4) and loss.weights == (1.0, 0.5, 2.0)
    expected = sum(
        weight * _hand_infonce(F.normalize(q[:, :m], dim=1), F.normalize(d[:, :m], dim=1), 20.0)
        for m, weight in ((16, 1.0), (8, 0.5), (4, 2.0))
    )
    assert float(loss(q, d, inputs)) == pytest.approx(expected, rel=1e-5)
    # the order the dims are typed in does not matter; weights follow it
    again = build_objective(LossConfig(matryoshka_dims="4,16,8", matryoshka_weights="2,1,0.5"), dim=16)
    assert float(again(q, d, inputs)) == pytest.approx(expected, rel=1e-5)
    plain = build_objective(LossConfig(), dim=16)
    assert isinstance(plain, InfoNCELoss)  # without --matryoshka-dims the objective is unchanged


def test_wraps_gist_and_distillation_per_prefix() -> None:
    q, d = _unit(3, 12, 3), _unit(6, 12, 4)
    guide = _unit(3, 5, 5) @ _unit(6, 5, 6).T
    inputs = LossInputs(torch.arange(3), torch.zeros(3, 6, dtype=torch.bool), guide_scores=guide)
    wrapped = MatryoshkaLoss(GISTLoss(0.05), (12, 6))
    base = GISTLoss(0.05)
    expected = sum(base(F.normalize(q[:, :m], dim=1), F.normalize(d[:, :m], dim=1), inputs) for m in (12, 6))
    assert float(wrapped(q, d, inputs)) == pytest.approx(float(expected), rel=1e-6)

    config = LossConfig(distill="kl", matryoshka_dims="12,6")
    objective = build_objective(config, dim=12)
    inputs.distill = DistillInputs(torch.tensor([[0, 3], [1, 4], [2, 5]]), torch.randn(3, 2))
    base = build_objective(LossConfig(distill="kl"))
    expected = sum(base(F.normalize(q[:, :m], dim=1), F.normalize(d[:, :m], dim=1), inputs) for m in (12, 6))
    assert float(objective(q, d, inputs)) == pytest.approx(float(expected), rel=1e-6)
    assert objective.temperature == pytest.approx(0.05)


def test_gradcache_gradients_equal_plain_path_under_matryoshka(tiny_model) -> None:
    from transformers import AutoModel, AutoTokenizer

    from densekit.retriever.train.distributed import DistributedContext
    from densekit.retriever.train.gradcache import contrastive_step
    from densekit.retriever.train.model import DualEncoder

    torch.manual_seed(0)
    model = DualEncoder(AutoModel.from_pretrained(tiny_model), "mean", True).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    queries = ["what causes scurvy", "is coffee bad for the heart", "how do vaccines work", "why is the sky blue"]
    docs = [f"document {i} about vitamin c, coffee, vaccines and light scattering {'x ' * i}" for i in range(8)]
    inputs = LossInputs(torch.arange(4), torch.zeros(4, 8, dtype=torch.bool))

    def grads(chunk: int | None) -> tuple[float, dict]:
        model.zero_grad(set_to_none=True)
        out = contrastive_step(
            model,
            MatryoshkaLoss(InfoNCELoss(0.05, learnable=True), (32, 16, 8)),
            tok(queries, padding=True, return_tensors="pt"),
            tok(docs, padding=True, return_tensors="pt"),
            inputs,
            DistributedContext(),
            torch.device("cpu"),
            chunk,
        )
        return float(out.loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain = grads(None)
    cached_loss, cached = grads(3)
    assert cached_loss == pytest.approx(plain_loss, abs=1e-5) and len(plain) > 10
    for name, grad in plain.items():
        assert torch.allclose(cached[name], grad, atol=1e-5, rtol=1e-4), name


def test_dims_are_parsed_and_checked() -> None:
    assert parse_dims("64,384, 128") == (384, 128, 64)
    for bad, message in (("0", "positive"), ("64,x", "integers"), ("64,64", "twice")):
        with pytest.raises(DensekitError, match=message):
            LossConfig(matryoshka_dims=bad).validate()
    with pytest.raises(DensekitError, match="2 weights for 3"):
        LossConfig(matryoshka_dims="32,16,8", matryoshka_weights="1,1").validate()
    with pytest.raises(DensekitError, match="needs --matryoshka-dims"):
        LossConfig(matryoshka_weights="1").validate()
    with pytest.raises(DensekitError, match="exceeds the model's embedding dimension 32"):
        build_objective(LossConfig(matryoshka_dims="64,32"), dim=32)


def test_truncated_encoding_is_the_renormalised_prefix_and_cached_apart(
    tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    from densekit.data import Corpus
    from densekit.index.cache import cache_root, encode_corpus
    from densekit.retriever.encoder import Encoder

    monkeypatch.setenv("DENSEKIT_HOME", str(tmp_path / "home"))
    texts = ["vitamin c prevents scurvy", "coffee and the heart", "the sky is blue because of rayleigh scattering"]
    full = Encoder(tiny_model, device="cpu")
    cut = Encoder(tiny_model, device="cpu", truncate_dim=12)
    assert cut.dim == 12 and cut.describe()["truncate_dim"] == 12 and "truncate_dim" not in full.describe()
    assert cut.fingerprint() != full.fingerprint()
    prefix = full.encode_documents(texts, show_progress=False)[:, :12]
    expected = prefix / np.linalg.norm(prefix, axis=1, keepdims=True)
    got = cut.encode_documents(texts, show_progress=False)
    assert got.shape == (3, 12) and np.allclose(got, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)

    corpus = Corpus([f"d{i}" for i in range(3)], [""] * 3, texts)
    assert encode_corpus(full, corpus, show_progress=False).shape == (3, 32)
    assert encode_corpus(cut, corpus, show_progress=False).shape == (3, 12)  # not the 32-d entry
    assert encode_corpus(full, corpus, show_progress=False).shape == (3, 32)
    assert len([p for p in cache_root().iterdir() if p.is_dir()]) == 2


def test_cli_truncated_index_reopens_truncated_and_bad_values_exit_2(
    tiny_model: Path, scifact_small: Path, train_negatives: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "cut.idx"
    build = ["index", "build", str(scifact_small), "--model", str(tiny_model), "--out", str(out)]
    code, _, err = run_cli([*build, "--truncate-dim", "16", "--json"], capsys, monkeypatch)
    assert code == 0, err
    code, stdout, err = run_cli(["index", "info", str(out), "--json"], capsys, monkeypatch)
    info = json.loads(stdout)
    assert info["dim"] == 16 and info["model"]["truncate_dim"] == 16 and info["model"]["dim"] == 16
    code, stdout, err = run_cli(["search", str(out), "vitamin d", "-k", "3", "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert len(json.loads(stdout)["hits"]) == 3  # queries encoded at 16 dimensions too
    code, stdout, err = run_cli(
        ["eval", str(scifact_small), "--model", str(tiny_model), "--truncate-dim", "16", "--split", "test", "--json"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert json.loads(stdout)["config"]["truncate_dim"] == 16

    code, _, err = run_cli([*build[:-1], str(tmp_path / "x.idx"), "--truncate-dim", "64"], capsys, monkeypatch)
    assert code == 2 and "--truncate-dim must be between 1 and the model's dimension 32" in err
    assert len(err.strip().splitlines()) == 1
    train = ["train", "--model", str(tiny_model), "--negatives", str(train_negatives), "--corpus", str(scifact_small)]
    train += ["--output", str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "2", "--device", "cpu"]
    code, stdout, err = run_cli(
        [*train, "--matryoshka-dims", "32,16,8", "--chunk-size", "1", "--max-length", "32", "--json", "--quiet"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err  # one GradCache step of the Matryoshka objective, saved
    summary = json.loads(stdout)
    assert summary["steps"] == 1 and summary["config"]["loss"]["matryoshka_dims"] == "32,16,8"
    for dims, message in (("0", "must be positive integers"), ("64,32", "exceeds the model's embedding dimension 32")):
        code, _, err = run_cli(
            [*train, "--output", str(tmp_path / "bad"), "--matryoshka-dims", dims], capsys, monkeypatch
        )
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1, err
