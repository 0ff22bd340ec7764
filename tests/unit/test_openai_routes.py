"""The OpenAI-compatible routes on a tiny real model (ModelServer mode), in process over a real socket,
driven by the official `openai` client and by raw HTTP: shapes, streaming, errors, rate limits,
metrics. The RAG, feedback and Prometheus paths run end to end in tests/e2e/test_rag_serving.py."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="install stackwise[serve]")
pytest.importorskip("sse_starlette", reason="install stackwise[serve]")
openai = pytest.importorskip("openai", reason="install stackwise[dev]")
import httpx  # noqa: E402

PROMPT = "The Australian government said"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import torch
    import uvicorn

    from stackwise.serving import ModelSource, create_app
    from stackwise.training.tiny import build_tiny_model

    torch.set_num_threads(1)
    lines = (Path(__file__).parents[1] / "golden").glob("*")
    texts = [PROMPT + " fires burned near Sydney on Sunday." for _ in range(50)] + [p.name for p in lines]
    folder = build_tiny_model(tmp_path_factory.mktemp("routes") / "tiny", texts, vocab_size=300)
    app = create_app(source=ModelSource(str(folder), "--model", "explicit"),
                     environ={"STACKWISE_SERVE_FEEDBACK": "0", "STACKWISE_SERVE_MAX_TOKENS": "64",
                              "STACKWISE_MODEL": "tiny", "STACKWISE_MODEL_VERSION": "3"})
    port = _port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.state.server.wait(60)
    yield app, f"http://127.0.0.1:{port}", folder
    server.should_exit = True
    thread.join(30)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)


def _reference(folder: Path, messages: list[dict], n: int) -> str:
    """transformers' own greedy generate on the chat template: what the engine must equal."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_chat_answer_is_transformers_greedy_with_usage_and_ids(served):
    _, url, folder = served
    messages = [{"role": "user", "content": PROMPT}]
    raw = client(url).chat.completions.with_raw_response.create(model="tiny:3", messages=messages, max_tokens=12)
    answer = raw.parse()
    assert answer.choices[0].message.content == _reference(folder, messages, 12)
    assert answer.model == "tiny:3" and raw.headers["x-stackwise-version"] == "tiny:3"
    assert raw.headers["x-request-id"] == answer.model_extra["stackwise"]["request_id"] == answer.id.removeprefix("chatcmpl-")
    assert answer.usage.completion_tokens == 12 and answer.usage.total_tokens == answer.usage.prompt_tokens + 12
    assert answer.choices[0].finish_reason == "length"


def test_a_stream_is_the_same_answer_in_pieces_ending_with_usage(served):
    _, url, _ = served
    messages = [{"role": "user", "content": PROMPT}]
    whole = client(url).chat.completions.create(model="tiny", messages=messages, max_tokens=10)
    chunks = list(client(url).chat.completions.create(model="tiny", messages=messages, max_tokens=10, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 10 and chunks[-1].choices[0].finish_reason == "length"


def test_concurrent_requests_share_batches_and_each_gets_its_own_answer(served):
    app, url, folder = served
    prompts = [PROMPT, "Fire crews", "The cricket", "Sydney"]
    engine = app.state.server._target.engine
    steps = engine.steps
    results: dict[int, str] = {}

    def one(i: int) -> None:
        results[i] = client(url).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": prompts[i]}], max_tokens=16).choices[0].message.content

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    for i, prompt in enumerate(prompts):
        assert results[i] == _reference(folder, [{"role": "user", "content": prompt}], 16)
    assert engine.steps - steps < 4 * 16  # batched: fewer forward passes than one request at a time


def test_stop_and_seed_are_honoured(served):
    _, url, _ = served
    messages = [{"role": "user", "content": PROMPT}]
    full = client(url).chat.completions.create(model="tiny", messages=messages, max_tokens=12).choices[0].message.content
    word = full.split()[1] if len(full.split()) > 1 else full[2:4]
    cut = client(url).chat.completions.create(model="tiny", messages=messages, max_tokens=12, stop=[word])
    assert cut.choices[0].finish_reason == "stop" and word not in cut.choices[0].message.content
    a, b = (client(url).chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=1.5,
                                                seed=11).choices[0].message.content for _ in range(2))
    assert a == b


@pytest.mark.parametrize("body, status, param, code", [
    (b"{oops", 400, None, None),
    (json.dumps({"messages": []}).encode(), 400, "messages", None),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}).encode(), 400, "max_tokens", None),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 65}).encode(), 400, "max_tokens",
     "max_tokens_exceeded"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "temperature": 3}).encode(), 400, "temperature", None),
    (json.dumps({"messages": [{"role": "user", "content": "word " * 2000}]}).encode(), 400, "messages",
     "context_length_exceeded"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}).encode(), 400,
     "stop", None),
])
def test_bad_requests_get_openai_shaped_errors(served, body, status, param, code):
    _, url, _ = served
    answer = httpx.post(f"{url}/v1/chat/completions", content=body, timeout=60,
                        headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    assert "Traceback" not in answer.text and answer.headers.get("x-request-id")


def test_errors_and_successes_are_counted_in_the_metrics(served):
    from prometheus_client.parser import text_string_to_metric_families

    _, url, _ = served

    def counts() -> dict[str, float]:
        text = httpx.get(f"{url}/metrics", timeout=30).text
        fam = {f.name: f for f in text_string_to_metric_families(text)}["stackwise:requests"]
        out: dict[str, float] = {}
        for s in fam.samples:
            if s.name.endswith("_total"):
                out[s.labels["status"]] = out.get(s.labels["status"], 0) + s.value
        return out

    before = counts()
    client(url).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    httpx.post(f"{url}/v1/chat/completions", content=b"{", timeout=30)
    after = counts()
    assert after.get("200", 0) - before.get("200", 0) == 1
    assert after.get("400", 0) - before.get("400", 0) == 1


def test_embeddings_and_feedback_without_an_index_or_a_store_say_so(served):
    _, url, _ = served
    with pytest.raises(openai.NotFoundError):
        client(url).embeddings.create(model="kb", input="x")
    answer = httpx.post(f"{url}/v1/feedback", json={"request_id": "abc", "score": 1}, timeout=30)
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "feedback_unavailable"


def test_a_chat_body_on_a_cloud_predict_route_is_a_chat_answer_and_completions_do_not_stream(served):
    _, url, _ = served
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6}
    chat = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
    for route in ("/invocations", "/score"):
        routed = httpx.post(f"{url}{route}", json=body, timeout=60)
        assert routed.status_code == 200 and routed.json()["object"] == "chat.completion"
        assert routed.json()["choices"][0]["message"] == chat["choices"][0]["message"]
    streamed = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "stream": True}, timeout=60)
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] is None
    assert "chat/completions" in streamed.json()["error"]["message"]


def test_the_rate_limiter_bursts_to_the_limit_then_refills_at_the_rate():
    from stackwise.serving import RateLimiter

    limiter = RateLimiter()
    assert [limiter.take("k", 3) for _ in range(3)] == [0, 0, 0]
    wait = limiter.take("k", 3)
    assert 1 <= wait <= 20  # one token comes back every 20 s at 3 per minute
    assert limiter.take("other", 3) == 0 and limiter.take("k", None) == 0
