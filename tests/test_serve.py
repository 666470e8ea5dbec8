"""`densekit serve`: the HTTP service's schema and errors (FastAPI's TestClient), and a real uvicorn
server (the CLI in a subprocess on a free port of 127.0.0.1) whose results equal `densekit search`, stay
right under 32 concurrent clients, and evaluate to the in-process metrics through RemoteRetriever."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import DENSEKIT, REPO, run_cli

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

TOLERANCE = 1e-5  # float32 rounding of a query embedded in another batch (~1e-7 seen)


@pytest.fixture(scope="module")
def index(tiny_model: Path, scifact_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "idx"
    code, _, _ = run_cli(["index", "build", str(scifact_small), "--model", str(tiny_model), "--out", str(out), "-q"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def queries(scifact_small: Path) -> dict[str, str]:
    from densekit.data import load_dataset

    return load_dataset(scifact_small, split="test").queries


@pytest.fixture(scope="module")
def client(index: Path):
    from fastapi.testclient import TestClient

    from densekit.integrations.http.config import ServeConfig
    from densekit.integrations.http.server import create_app

    with TestClient(create_app(index, config=ServeConfig(max_k=50, max_queries=30))) as test_client:
        yield test_client


def same_ranking(a: list, b: list, tolerance: float = TOLERANCE) -> bool:
    """Equal rankings up to float rounding: scores rank by rank within `tolerance`, and the same documents
    except where two scores are that close (a near-tie may swap, also across the k-th place)."""
    if len(a) != len(b) or any(abs(x[1] - y[1]) > tolerance for x, y in zip(a, b, strict=True)):
        return False
    scores_a, scores_b = dict(a), dict(b)
    for doc_id in scores_a.keys() ^ scores_b.keys():  # in one ranking only: a near-tie at the k-th place
        if abs(scores_a.get(doc_id, scores_b.get(doc_id)) - a[-1][1]) > tolerance:
            return False
    return all(abs(scores_a[d] - scores_b[d]) <= tolerance for d in scores_a.keys() & scores_b.keys())


def test_openapi_health_and_info(client, index: Path) -> None:
    schema = client.get("/openapi.json").json()
    request = schema["components"]["schemas"]["SearchRequest"]["properties"]
    assert {"query", "queries", "k", "filter", "return_text"} <= set(request)
    assert "SearchResponse" in schema["components"]["schemas"] and "/info" in schema["paths"]
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    from densekit import __version__
    from densekit.index.docstore import DocStore

    assert info["kind"] == "dense" and info["index"] == "idx" and info["densekit_version"] == __version__
    assert info["documents"] == len(DocStore.open(index)) and info["dimension"] == 32 and info["texts"]
    assert info["max_k"] == 50 and info["model"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"query": "vitamin d", "k": 0}, 400, "k must be from 1 to 50"),
        ({"query": "vitamin d", "k": 51}, 400, "k must be from 1 to 50"),
        ({"k": 3}, 400, "give `query`"),
        ({"query": "a", "queries": ["b"]}, 400, "not both"),
        ({"queries": []}, 400, "empty"),
        ({"queries": ["a"] * 31}, 400, "the limit is 30"),
        ({"query": "   "}, 400, "is empty"),
        ({"query": "vitamin d", "k": "ten"}, 422, "k: Input should be a valid integer"),
        ({"query": "vitamin d", "top_k": 3}, 422, "top_k: Extra inputs are not permitted"),
        ({"query": "vitamin d", "filter": {"year": {"$gt": 3}}}, 422, "filter.year"),
    ],
)
def test_bad_requests_get_one_line(client, body: dict, status: int, words: str) -> None:
    response = client.post("/search", json=body)
    detail = response.json()["detail"]
    assert response.status_code == status and isinstance(detail, str) and "\n" not in detail
    assert words in detail, detail


def test_unknown_route_document_and_broken_json(client) -> None:
    response = client.get("/nope")
    assert response.status_code == 404 and "no route GET /nope" in response.json()["detail"]
    response = client.get("/documents/no-such-doc")
    assert response.status_code == 404 and "no-such-doc" in response.json()["detail"]
    response = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and isinstance(response.json()["detail"], str)


def test_search_equals_the_retriever_texts_and_filter(client, index: Path, queries: dict[str, str]) -> None:
    from densekit.index.docstore import DocStore
    from densekit.retriever.compose import open_index

    direct = open_index(index).search(queries, 10)
    body = client.post("/search", json={"queries": queries, "k": 10}).json()
    assert [r["query_id"] for r in body["results"]] == list(queries)
    served = {r["query_id"]: [(h["doc_id"], h["score"]) for h in r["hits"]] for r in body["results"]}
    assert served == dict(direct)  # one request: the very call `retriever.search` makes, bit for bit

    store = DocStore.open(index)
    first_id, first_text = next(iter(queries.items()))
    hits = client.post("/search", json={"query": first_text, "k": 3, "return_text": True}).json()["results"][0]["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    for hit in hits:
        assert (hit["title"], hit["text"], hit["metadata"]) == (*_title_text(store, hit["doc_id"]), {})
    # A filter keeps the best documents among those it allows, in the retriever's order.
    allowed = [doc_id for doc_id, _ in direct[first_id][2:10:2]]
    hits = client.post("/search", json={"query": first_text, "k": 3, "filter": {"doc_id": allowed}}).json()
    kept = [h["doc_id"] for h in hits["results"][0]["hits"]]
    assert kept == allowed[:3]


def _title_text(store, doc_id: str) -> tuple[str, str]:
    doc = store.get(doc_id)
    return doc.title, doc.text


@pytest.fixture(scope="module")
def server(index: Path):
    """`densekit serve INDEX --port 0 --json` in a subprocess; yields its URL, stops it with SIGINT."""
    process = subprocess.Popen(
        [DENSEKIT, "serve", str(index), "--port", "0", "--max-wait-ms", "5", "--threads", "1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "DENSEKIT_QUIET": "1"},
    )
    line = process.stdout.readline()
    if not line:
        process.kill()
        pytest.fail(f"densekit serve did not start: {process.stderr.read()}")
    info = json.loads(line)
    yield info
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0, process.stderr.read()


def test_server_results_equal_densekit_search(
    server: dict, index: Path, scifact_small: Path, queries: dict[str, str], capsys, monkeypatch
) -> None:
    from densekit.integrations.http.client import RemoteRetriever

    assert server["url"].startswith("http://127.0.0.1:") and server["kind"] == "dense"
    args = ["search", str(index), "--queries", str(scifact_small), "--split", "test", "-k", "10", "--json"]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    expected = {q: [tuple(hit) for hit in hits] for q, hits in json.loads(out)["results"].items()}
    with RemoteRetriever(server["url"]) as remote:
        assert remote.health() == {"status": "ok"}
        assert dict(remote.search(queries, 10)) == expected
        # Requests of 7 queries: batched differently, so equal up to float rounding.
        small_batches = RemoteRetriever(server["url"], batch_size=7).search(queries, 10)
        assert all(same_ranking(small_batches[q], expected[q]) for q in queries)


def test_concurrent_clients_all_succeed_with_sequential_results(server: dict, queries: dict[str, str]) -> None:
    from densekit.integrations.http.client import RemoteRetriever

    remote = RemoteRetriever(server["url"])
    texts = list(queries.items()) * 2  # 40 requests from 32 threads
    sequential = {q: remote.search({q: text}, 5)[q] for q, text in queries.items()}
    before = remote.info()["batching"]
    answers: list = [None] * len(texts)
    errors: list = []

    def client(i: int) -> None:
        try:
            for j in range(i, len(texts), 32):
                query_id, text = texts[j]
                answers[j] = remote.search({query_id: text}, 5)[query_id]
        except Exception as exc:  # noqa: BLE001 -- collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors[0]
    assert all(same_ranking(answers[j], sequential[q]) for j, (q, _) in enumerate(texts))
    after = remote.info()["batching"]
    assert after["requests"] - before["requests"] == len(texts)
    assert after["searches"] - before["searches"] <= len(texts)  # some were gathered when the CPU allowed


def test_evaluation_through_the_server_equals_in_process(server: dict, index: Path, scifact_small: Path) -> None:
    from densekit.data import load_dataset
    from densekit.eval.harness import evaluate_retriever
    from densekit.integrations.http.client import RemoteRetriever
    from densekit.retriever.compose import open_index

    dataset = load_dataset(scifact_small, split="test")
    local = evaluate_retriever(open_index(index), dataset, depth=50)
    remote = evaluate_retriever(RemoteRetriever(server["url"]), dataset, depth=50)
    assert remote.result.metrics == local.result.metrics and remote.run == local.run


def test_langchain_retriever_over_the_server(server: dict, index: Path, queries: dict[str, str]) -> None:
    pytest.importorskip("langchain_core")
    from densekit.integrations.http.client import RemoteRetriever
    from densekit.integrations.langchain import DensekitRetriever

    remote = RemoteRetriever(server["url"])
    over_http = DensekitRetriever(retriever=remote, docstore=remote.docstore(), k=3, index_name="idx")
    local = DensekitRetriever(index_path=str(index), k=3)
    query = next(iter(queries.values()))
    got, want = over_http.invoke(query), local.invoke(query)
    assert [(d.id, d.page_content) for d in got] == [(d.id, d.page_content) for d in want]


_NO_FASTAPI = (
    "import sys; sys.modules['fastapi'] = None\nfrom densekit.cli import main\n"
    "sys.argv = ['densekit', *sys.argv[1:]]\nmain()"
)


def test_without_the_serve_extra_and_bad_options(index: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _NO_FASTAPI, "serve", str(index)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "pip install 'densekit[serve]'" in result.stderr, result.stderr
    probe = _NO_FASTAPI.replace("sys.modules['fastapi'] = None", "pass") + "\n"
    probe = probe.replace("main()", "try:\n    main()\nfinally:\n    print('torch:', 'torch' in sys.modules)")
    result = subprocess.run(
        [sys.executable, "-c", probe, "serve", str(tmp_path / "nothing")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "no such index directory" in result.stderr and "torch: False" in result.stdout
    code, _, _ = run_cli(["serve", str(index), "--max-batch", "0"])
    assert code == 2


def test_batcher_gathers_concurrent_queries_and_isolates_a_failing_request(
    index: Path, queries: dict[str, str]
) -> None:
    from densekit.integrations.http.batching import MicroBatcher
    from densekit.retriever.compose import open_index

    retriever = open_index(index)
    batcher = MicroBatcher(retriever, max_batch=8, max_wait_ms=500)
    items = list(queries.items())[:8]
    futures = [batcher.submit({query_id: text}, 5) for query_id, text in items]  # all within the wait
    runs = [future.result(timeout=60) for future in futures]
    assert batcher.stats.searches == 1 and batcher.stats.largest_batch == 8
    together = retriever.search(dict(items), 5)  # the one call the batcher made
    assert all(run == {query_id: together[query_id]} for run, (query_id, _) in zip(runs, items, strict=True))

    good = batcher.submit(dict(items[:1]), 5)
    bad = batcher.submit({"x": None}, 5)  # not a text: the encoder raises
    assert same_ranking(good.result(timeout=60)[items[0][0]], together[items[0][0]])  # searched alone
    with pytest.raises(Exception):  # noqa: B017 -- whatever the tokenizer raises reaches this caller only
        bad.result(timeout=60)
    batcher.close()
    assert not batcher.alive()
