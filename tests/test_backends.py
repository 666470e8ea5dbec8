"""Encoder backends (ONNX Runtime, OpenVINO) and `densekit models export`: same embeddings as torch (fp32
within 1e-4, int8 within a cosine of 0.99), sentence-transformers' file layout, cache keys per backend,
a missing extra named in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from densekit.errors import DensekitError  # noqa: E402
from densekit.index.cache import cache_key  # noqa: E402
from densekit.retriever.backends import parse_backend, require  # noqa: E402
from densekit.retriever.encoder import Encoder  # noqa: E402
from densekit.retriever.model_export import export_model  # noqa: E402

TEXTS = [
    "what causes scurvy?",
    "Vitamin C deficiency leads to scurvy, a disease of collagen synthesis in connective tissue.",
    "0-dimensional biomaterials show inductive properties.",
    "Aspirin inhibits the production of PGE2 in patients with colorectal cancer, and the effect is dose dependent.",
]


@pytest.fixture(scope="module")
def tiny_exported(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT exported for ONNX (fp32 + int8) and OpenVINO (fp32 + int8) into one folder."""
    pytest.importorskip("openvino")
    out = tmp_path_factory.mktemp("tiny_exported") / "model"
    export_model(tiny_model, "onnx", out, quantize="int8")
    export_model(out, "openvino", out, quantize="int8", calibration=TEXTS * 2)
    return out


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_fp32_backends_embed_as_torch(tiny_exported: Path, backend: str) -> None:
    reference = Encoder(tiny_exported, device="cpu").encode(TEXTS, show_progress=False)
    encoder = Encoder(tiny_exported, device="cpu", backend=backend)
    assert encoder.model is None  # no torch weights loaded
    got = encoder.encode(TEXTS, batch_size=3, show_progress=False)
    assert got.dtype == np.float32 and got.shape == reference.shape
    assert np.abs(got - reference).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    single = encoder.encode_queries(TEXTS[:1], show_progress=False)  # one query, batch 1 (the RAG path)
    assert np.abs(single - reference[:1]).max() < 1e-4


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_int8_backends_stay_close(tiny_exported: Path, backend: str) -> None:
    """A random tiny model quantises worse than a trained one; MiniLM's 0.99 is checked below (slow)."""
    reference = Encoder(tiny_exported, device="cpu").encode(TEXTS, show_progress=False)
    got = Encoder(tiny_exported, device="cpu", backend=backend, quantize="int8").encode(TEXTS, show_progress=False)
    assert (got * reference).sum(1).min() > 0.95


def test_export_layout_is_sentence_transformers(tiny_exported: Path) -> None:
    """The files sit where sentence-transformers' backend loader looks for them (its own lookup decides)."""
    from sentence_transformers.backend.utils import backend_should_export

    files = {p.relative_to(tiny_exported).as_posix() for p in tiny_exported.rglob("*") if p.is_file()}
    assert {"modules.json", "model.safetensors", "onnx/model.onnx", "openvino/openvino_model.xml"} <= files
    assert any(f.startswith("onnx/model_qint8_") and f.endswith(".onnx") for f in files)
    assert "openvino/openvino_model_qint8_quantized.xml" in files
    export, kwargs = backend_should_export(tiny_exported, True, {}, "model.onnx", "*.onnx", "ONNX")
    assert export is False and kwargs["subfolder"] == "onnx"
    int8 = next(f for f in files if f.startswith("onnx/model_qint8_"))
    export, kwargs = backend_should_export(tiny_exported, True, {"file_name": int8}, "model.onnx", "*.onnx", "ONNX")
    assert export is False and kwargs["file_name"] == int8.split("/")[1]


def test_sentence_transformers_loads_the_onnx_export(tiny_exported: Path) -> None:
    pytest.importorskip("optimum.onnxruntime", reason="sentence-transformers' ONNX backend needs optimum-onnx")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tiny_exported), backend="onnx", model_kwargs={"file_name": "onnx/model.onnx"})
    ours = Encoder(tiny_exported, device="cpu", backend="onnx").encode(TEXTS, show_progress=False)
    assert np.abs(st.encode(TEXTS) - ours).max() < 1e-4


def test_fingerprints_and_cache_keys_differ_by_backend(tiny_exported: Path) -> None:
    prints = {
        spec: Encoder(tiny_exported, device="cpu", backend=b, quantize=q).fingerprint()
        for spec in ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
        for b, q in [parse_backend(spec)]
    }
    assert len(set(prints.values())) == 5
    assert len({cache_key(p, "corpus") for p in prints.values()}) == 5
    # the weights part is shared: an index built on one backend opens on another (announced)
    assert len({p.split("|")[0] for p in prints.values()}) == 1
    # the CLI's spelling is the constructor's: "onnx-int8" is backend="onnx", quantize="int8"
    for spec, fingerprint in prints.items():
        spelled = Encoder(tiny_exported, device="cpu", backend=spec)
        assert spelled.fingerprint() == fingerprint and spelled.backend_name == spec
    assert Encoder(tiny_exported, device="cpu", backend=None).backend_name == "torch"
    with pytest.raises(DensekitError, match="disagree"):
        Encoder(tiny_exported, device="cpu", backend="onnx-int8", quantize="fp16")


def test_bad_backend_and_missing_extra_are_one_line_errors(monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> None:
    with pytest.raises(DensekitError, match="unknown encoder backend 'tensorrt'"):
        parse_backend("tensorrt")
    with pytest.raises(DensekitError, match="torch runs fp32"):
        parse_backend("torch-int8")
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(DensekitError) as info:
        require("openvino", "openvino")
    assert "pip install 'densekit[openvino]'" in str(info.value) and "\n" not in str(info.value)


def test_openvino_int8_export_needs_calibration(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(DensekitError, match="--calibration"):
        export_model(tiny_model, "openvino", tmp_path / "x", quantize="int8")
    assert not (tmp_path / "x").exists()


def test_models_export_cli_json_and_index_on_onnx(
    tiny_model: Path,
    scifact_small: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conftest import run_cli

    monkeypatch.setenv("DENSEKIT_HOME", str(tmp_path / "home"))
    out = tmp_path / "exported"
    code, stdout, _ = run_cli(
        ["models", "export", str(tiny_model), "--backend", "onnx", "--out", str(out), "--json"], capsys, monkeypatch
    )
    assert code == 0, stdout
    info = json.loads(stdout)
    assert info["files"] == ["onnx/model.onnx"] and (out / "onnx" / "model.onnx").is_file()
    # a user's folder is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    args = ["models", "export", str(tiny_model), "--backend", "onnx", "--out", str(tmp_path / "mine")]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "did not write" in err and (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    # index build and search on the onnx backend; the manifest records it and search reopens with it
    index = tmp_path / "idx"
    args = [
        "index",
        "build",
        str(scifact_small),
        "--out",
        str(index),
        "-m",
        str(out),
        "--encoder-backend",
        "onnx",
        "--json",
    ]
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["model"]["backend"] == "onnx"
    code, stdout, _ = run_cli(["search", str(index), "vitamin c", "-k", "3", "--json"], capsys, monkeypatch)
    assert code == 0, stdout
    hits = json.loads(stdout)["hits"]
    args = ["search", str(index), "vitamin c", "-k", "3", "--encoder-backend", "torch", "--json"]
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    assert code == 0 and "built with onnx" in err
    assert [h["doc_id"] for h in json.loads(stdout)["hits"]] == [h["doc_id"] for h in hits]
    # eval of a model folder on the onnx backend scores as the torch backend does (fp32 export)
    scores = {}
    for backend in ("torch", "onnx"):
        args = ["eval", str(scifact_small), "--model", str(out), "--encoder-backend", backend, "--depth", "10"]
        code, stdout, err = run_cli([*args, "--no-cache", "--json"], capsys, monkeypatch)
        assert code == 0, err
        scores[backend] = json.loads(stdout)["metrics"]
    assert scores["onnx"] == pytest.approx(scores["torch"], abs=1e-6)


def test_minilm_int8_cosine(minilm_folder: Path, tmp_path: Path) -> None:
    """Trained weights: every int8 embedding within a cosine of 0.99 of torch's (ONNX dynamic int8)."""
    out = tmp_path / "minilm"
    export_model(minilm_folder, "onnx", out, quantize="int8")
    reference = Encoder(out, device="cpu").encode(TEXTS, show_progress=False)
    got = Encoder(out, device="cpu", backend="onnx", quantize="int8").encode(TEXTS, show_progress=False)
    assert (got * reference).sum(1).min() >= 0.99
