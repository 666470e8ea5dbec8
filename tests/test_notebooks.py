"""The notebooks: committed without outputs, and each one executes top to bottom on a small SciFact
subset (nbclient runs them in a real Jupyter kernel, as a user would).

nbclient rather than nbmake: the test sets the subset sizes and a work folder through the kernel's
environment, uses the session's embedding cache (so notebooks 01 and 03 share MiniLM embeddings of
the same subset), and reports the failing cell's source; it needs no extra pytest plugin.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_quickstart", "02_mine_and_train", "03_rag_langchain"]


def notebook_path(name: str) -> Path:
    path = NOTEBOOKS / f"{name}.ipynb"
    if not path.is_file():
        pytest.fail(f"{path} is missing")
    return path


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name: str) -> None:
    book = nbformat.read(notebook_path(name), as_version=4)
    nbformat.validate(book)
    dirty = [
        i
        for i, c in enumerate(book.cells)
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, f"{name}: cells {dirty} hold outputs; run `python notebooks/strip_outputs.py`"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(
    name: str, beir_root: Path, densekit_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    # Small data: 30 test queries, 200 distractors; 02 mines and trains on 32 training queries.
    monkeypatch.setenv("DENSEKIT_NB_TEST_QUERIES", "30")
    monkeypatch.setenv("DENSEKIT_NB_DISTRACTORS", "200")
    monkeypatch.setenv("DENSEKIT_NB_TRAIN_QUERIES", "32")
    monkeypatch.setenv("DENSEKIT_NB_WORK", str(tmp_path))
    monkeypatch.setenv("DENSEKIT_DATA", str(beir_root))
    monkeypatch.setenv("DENSEKIT_HOME", str(densekit_home))
    monkeypatch.setenv("DENSEKIT_QUIET", "1")
    book = nbformat.read(notebook_path(name), as_version=4)
    client = NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute(env=dict(os.environ))
    except CellExecutionError as exc:
        pytest.fail(f"{name} failed:\n{exc}")
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
