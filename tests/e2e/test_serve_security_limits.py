"""`stackwise serve` under hostile or careless clients, over real sockets (issue 14, items 6, 10, 21).

- A 30 MB body is refused with 413 (API error shape) as soon as its Content-Length says so, or as
  soon as its chunks pass the cap: the server's memory, sampled while the client sends, does not
  grow by anything near the body's size; then the server still answers.
- A long prompt (within the length cap) is cut before it is tokenized: the tokenizer never sees
  more than the context's worth of characters, and the ids are those of tokenizing all and cutting.
- A large request held up in preprocessing (its tokenizer call blocked on purpose) does not hold
  up another client's small request: no lock is held across preprocessing.
- `stackwise serve --host 0.0.0.0` with a key: 401 without it, 200 with it, probes open; with
  `--insecure` and no key it serves; the server's output carries no bitsandbytes hub warning.
- Loading a model (a LoRA adapter, and the shipped embedding model) imports no bitsandbytes and
  opens no connection, with HF_HUB_OFFLINE unset.
Time bounds here only catch stalls; nothing asserts a duration.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("fastapi", reason="install stackwise[serve]")
pytest.importorskip("uvicorn", reason="install stackwise[serve]")

from .conftest import lee_articles, stackwise_env, tiny_lora_model, wait_for  # noqa: E402
from .conftest import free_port as _free_port, start_serve as _serve, wait_serve_ready as _wait_ready  # noqa: E402

BODY_BYTES = 30 * 1024 * 1024
LOAD_TIMEOUT_S = 120
STALL_S = 60  # a small generation of the tiny model takes milliseconds; this only catches a stall


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    base, adapter = tiny_lora_model(tmp_path_factory.mktemp("serve-security"), lora_alpha=16)
    return {"base": base, "adapter": adapter}


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    return out


class PeakRSS:
    """The highest resident memory of process `pid`, sampled every few ms while in the block."""

    def __init__(self, pid: int):
        import psutil

        self.process = psutil.Process(pid)
        self.base = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> PeakRSS:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.2)  # one last look after the answer
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.base


def _send_large(port: int, chunked: bool) -> tuple[int, dict, int]:
    """POST a JSON body of BODY_BYTES (a prompt of 'a's) over a raw socket, 64 KiB at a time, and
    stop sending as soon as the server answers. (status, JSON body, bytes sent)."""
    head = b'{"prompt": "'
    tail = b'"}'
    filler = b"a" * 65536
    headers = [b"POST /v1/completions HTTP/1.1", b"Host: 127.0.0.1", b"Content-Type: application/json",
               b"Connection: close"]
    headers.append(b"Transfer-Encoding: chunked" if chunked else f"Content-Length: {BODY_BYTES}".encode())
    sock = socket.create_connection(("127.0.0.1", port), timeout=STALL_S)
    sent = 0

    def send(data: bytes) -> None:
        nonlocal sent
        sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        sent += len(data)

    try:
        sock.sendall(b"\r\n".join(headers) + b"\r\n\r\n")
        send(head)
        while sent < BODY_BYTES - len(tail):
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered: stop sending what it will not read
            send(filler[: BODY_BYTES - len(tail) - sent])
        else:
            send(tail)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed its side after answering; the answer is in the receive buffer
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    sock.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 "), answer[:500]
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body) if body.startswith(b"{") else {}, sent


# -- item 6: body cap, memory, prompt cap -------------------------------------------------------------
def test_a_30_mb_body_is_refused_413_without_the_server_holding_it(models, sw_home, cleanup_pids):
    import httpx

    port = _free_port()
    proc = _serve(sw_home, ["--model", str(models["base"]), "--port", str(port)], cleanup_pids)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(proc, f"{url}/ping")
    assert httpx.post(f"{url}/v1/completions", json={"prompt": "warm up", "max_tokens": 2}, timeout=STALL_S
                      ).status_code == 200
    for chunked in (False, True):
        with PeakRSS(proc.pid) as rss:
            status, body, sent = _send_large(port, chunked)
        assert status == 413, (chunked, status, body)
        assert body["error"]["type"] == "invalid_request_error" and "limit of 1,048,576 bytes" in body["error"]["message"]
        # The whole body would be 30 MB as bytes, more again as a str; reading it at all shows here.
        assert rss.growth < BODY_BYTES // 3, f"server memory grew {rss.growth / 2**20:.1f} MiB (chunked={chunked})"
    long = httpx.post(f"{url}/v1/completions", json={"prompt": "x " * 20000}, timeout=STALL_S)
    assert long.status_code == 400 and "at most 32,768" in long.json()["error"]["message"], long.text
    after = httpx.post(f"{url}/v1/completions", json={"prompt": "still here", "max_tokens": 2}, timeout=STALL_S)
    assert after.status_code == 200, after.text
    out = _stop(proc)
    assert "Traceback" not in out and "kernels-community" not in out, out[-3000:]


# -- item 6: cut before tokenizing; no lock across preprocessing (the app in process, uvicorn) ------
class SpyTokenizer:
    """The model's tokenizer, recording the length of every text it is asked to tokenize, and
    blocking a call whose text contains `block_marker` until `release` is set (bounded)."""

    def __init__(self, tokenizer, block_marker: str):
        self.__dict__.update(_tok=tokenizer, seen=[], marker=block_marker, entered=threading.Event(),
                             release=threading.Event())

    def __call__(self, text, *args, **kwargs):
        self.seen.append(len(text))
        if self.marker in text:
            self.entered.set()
            self.release.wait(3 * STALL_S)
        return self._tok(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)


@pytest.fixture
def live_app(models, sdk_env):
    """The model-source app on uvicorn in a thread, on a free loopback port; its model loaded."""
    import uvicorn

    from stackwise.serving import create_app, model_source

    app = create_app(source=model_source(str(models["base"])), environ={})
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=LOAD_TIMEOUT_S, what="uvicorn started")
    assert app.state.server.wait(LOAD_TIMEOUT_S), "the model did not load in time"
    yield app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_a_long_prompt_is_cut_before_it_is_tokenized(live_app):
    import httpx

    from stackwise.evaluation.lm import CHARS_PER_TOKEN_BOUND

    app, url = live_app
    lm = app.state.server._lm
    real = lm.tokenizer
    prompt = " ".join(lee_articles())[:30000]
    tokens = 4
    keep = lm.max_len - tokens
    assert len(prompt) > 2 * keep * CHARS_PER_TOKEN_BOUND  # the test means something
    expected = lm._encode(prompt, bos=True)[-keep:]  # tokenize all, then cut: what the model read before
    spy = SpyTokenizer(real, block_marker="\0never\0")
    lm.tokenizer = spy
    try:
        answer = httpx.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": tokens}, timeout=STALL_S)
        assert answer.status_code == 200, answer.text
        assert spy.seen and max(spy.seen) <= keep * CHARS_PER_TOKEN_BOUND, spy.seen
        assert lm.prepare(prompt, tokens) == expected  # the same ids, for a fraction of the work
    finally:
        lm.tokenizer = real


def test_a_request_in_preprocessing_holds_up_no_other_request(live_app):
    import httpx

    app, url = live_app
    lm = app.state.server._lm
    real = lm.tokenizer
    spy = SpyTokenizer(real, block_marker="HOLD-HERE")
    lm.tokenizer = spy
    large: dict = {}

    def send_large() -> None:
        large["response"] = httpx.post(f"{url}/v1/completions", timeout=4 * STALL_S,
                                       json={"prompt": "word " * 5000 + "HOLD-HERE", "max_tokens": 4})

    sender = threading.Thread(target=send_large, daemon=True)
    try:
        sender.start()
        assert spy.entered.wait(STALL_S), "the large request never reached its tokenizer"
        small = httpx.post(f"{url}/v1/completions", json={"prompt": "Fire crews", "max_tokens": 4}, timeout=STALL_S)
        assert small.status_code == 200, small.text
        assert sender.is_alive() and "response" not in large  # answered while the large one was held
        assert httpx.get(f"{url}/ping", timeout=STALL_S).status_code == 200
    finally:
        spy.release.set()
        sender.join(4 * STALL_S)
        lm.tokenizer = real
    assert large["response"].status_code == 200, large["response"].text


# -- item 10: keys over a real socket ----------------------------------------------------------------
def test_a_public_bind_serves_with_a_key_and_refuses_without(models, sw_home, cleanup_pids):
    import httpx

    from .conftest import run_cli

    port = _free_port()
    refused = subprocess.run([sys.executable, "-m", "stackwise.cli", "serve", "--model", str(models["base"]),
                              "--host", "0.0.0.0", "--port", str(port)], cwd=str(sw_home), env=stackwise_env(sw_home),
                             capture_output=True, text=True, timeout=LOAD_TIMEOUT_S)
    assert refused.returncode == 2 and "no API key exists" in refused.stderr, refused.stderr
    key = run_cli(sw_home, "keys", "create", "client", cwd=sw_home).stdout.strip()
    proc = _serve(sw_home, ["--model", str(models["base"]), "--host", "0.0.0.0", "--port", str(port)], cleanup_pids)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(proc, f"{url}/ping")  # probes need no key
    body = {"inputs": "The Australian government said", "parameters": {"max_new_tokens": 4}}
    assert httpx.post(f"{url}/invocations", json=body, timeout=STALL_S).status_code == 401
    wrong_key = key[:-1] + ("1" if key.endswith("0") else "0")  # a different last character, always
    wrong = httpx.post(f"{url}/invocations", json=body, headers={"Authorization": f"Bearer {wrong_key}"},
                       timeout=STALL_S)
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    ok = httpx.post(f"{url}/invocations", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=STALL_S)
    assert ok.status_code == 200 and ok.json()[0]["generated_text"] is not None, ok.text
    assert httpx.get(f"{url}/", timeout=STALL_S).status_code == 200
    assert httpx.get(f"{url}/docs", timeout=STALL_S).status_code == 404
    run_cli(sw_home, "keys", "revoke", "client", cwd=sw_home)
    gone = httpx.post(f"{url}/invocations", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=STALL_S)
    assert gone.status_code == 401  # revoked: refused at once, and no key left does not open the server
    out = _stop(proc)
    assert key not in out and "kernels-community" not in out and "Traceback" not in out, out[-3000:]

    # --insecure: something in front authenticates; no key needed.
    port = _free_port()
    proc = _serve(sw_home, ["--model", str(models["base"]), "--host", "0.0.0.0", "--port", str(port), "--insecure"],
                  cleanup_pids)
    _wait_ready(proc, f"http://127.0.0.1:{port}/ping")
    assert httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=STALL_S).status_code == 200
    _stop(proc)


# -- item 21: no bitsandbytes, no hub ------------------------------------------------------------------
NO_NETWORK = """
import json, socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args[:2])[:200])
    raise OSError("network disabled by the test")
socket.getaddrinfo = refuse
socket.socket.connect = lambda self, address: refuse(address)
socket.create_connection = refuse
if sys.argv[1] == "lm":
    from stackwise.evaluation.lm import load
    lm = load(sys.argv[2], chat_template=False)
    assert lm.generate("The Australian government said", 3) is not None
else:
    from stackwise.embeddings import load_embedder
    load_embedder("all-MiniLM-L6-v2").encode(["a test"])
print(json.dumps({"bitsandbytes": sys.modules.get("bitsandbytes") is not None, "attempts": attempts}))
"""


def test_loading_models_imports_no_bitsandbytes_and_reaches_for_no_hub(models, sw_home):
    env = {k: v for k, v in stackwise_env(sw_home).items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    for args in (["lm", str(models["adapter"])], ["embedder"]):  # a LoRA adapter (peft); sentence-transformers
        run = subprocess.run([sys.executable, "-c", NO_NETWORK, *args], cwd=str(sw_home), env=env,
                             capture_output=True, text=True, timeout=LOAD_TIMEOUT_S * 2)
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result == {"bitsandbytes": False, "attempts": []}, (args[0], result, run.stderr[-3000:])
        assert "kernels-community" not in run.stderr and "offline mode" not in run.stderr, run.stderr[-3000:]
