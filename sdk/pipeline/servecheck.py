"""The serve-check step: one chat request to the deployed endpoint through its OpenAI-compatible route.

With `url` (the endpoint's /v1 base, a gateway's or a cloud endpoint's behind one), the request goes there.
On the local stack without `url`, the step starts `stackwise serve --stack S` on a free loopback port (the
server a user runs), asks, and stops it. Passes when the answer is 200 with non-empty text that contains
every `expect` string (case-insensitive); the key named by `api_key_env` is sent as a Bearer token and
never recorded.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from ..errors import InputError, JobFailedError, SpecError

if TYPE_CHECKING:
    from .steps import StepContext


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ask(ctx: "StepContext", base: str, w: dict[str, Any], key: str | None) -> str:
    import httpx

    body: dict[str, Any] = {"messages": [{"role": "user", "content": w.get("prompt") or "Say hello."}],
                            "max_tokens": int(w.get("max_tokens", 32))}
    if w.get("model"):
        body["model"] = w["model"]
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = base.rstrip("/") + "/chat/completions"
    try:
        answer = httpx.post(url, json=body, headers=headers, timeout=float(w.get("timeout_s", 120)))
    except httpx.HTTPError as exc:
        raise JobFailedError(f"serve-check {ctx.name!r}: {url} does not answer ({type(exc).__name__})",
                             where=f"{ctx.where}.with.url", fix="check that the endpoint is up and the URL") from None
    if answer.status_code != 200:
        raise JobFailedError(f"serve-check {ctx.name!r}: {url} answered {answer.status_code}: {answer.text[:300]}",
                             where=ctx.where, fix="read the endpoint's logs (stackwise endpoints, the serve output)")
    text = (answer.json().get("choices") or [{}])[0].get("message", {}).get("content") or ""
    ctx.details["latency_s"] = round(answer.elapsed.total_seconds(), 3)
    if not text.strip():
        raise JobFailedError(f"serve-check {ctx.name!r}: the endpoint answered with empty text", where=ctx.where,
                             fix="check the deployed model and its generation settings")
    missing = [e for e in w.get("expect") or [] if str(e).lower() not in text.lower()]
    if missing:
        raise JobFailedError(f"serve-check {ctx.name!r}: the answer lacks {missing}: {text[:200]!r}", where=ctx.where,
                             fix="deploy a better version, or adjust with.expect")
    return text


def check(ctx: "StepContext", w: dict[str, Any]) -> str:
    key = None
    if w.get("api_key_env"):
        key = os.environ.get(str(w["api_key_env"]))
        if not key:
            raise InputError(f"serve-check {ctx.name!r}: the environment variable {w['api_key_env']} is not set",
                             where=f"{ctx.where}.with.api_key_env", fix=f"export {w['api_key_env']}=<the endpoint's key>")
    if w.get("url"):
        return _ask(ctx, str(w["url"]), w, key)
    if not ctx.platform.stack.is_local:
        raise SpecError(f"serve-check {ctx.name!r} on the cloud stack {ctx.stack!r} needs with.url",
                        where=f"{ctx.where}.with", fix="give the endpoint's OpenAI-compatible /v1 URL as `url:`")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stackwise.cli", "serve", "--stack", ctx.stack, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + float(w.get("timeout_s", 180))
        while True:
            if proc.poll() is not None:
                raise JobFailedError(f"serve-check {ctx.name!r}: stackwise serve exited: {proc.stdout.read()[-500:]}",
                                     where=ctx.where, fix="run `stackwise serve` by hand to see why")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise JobFailedError(f"serve-check {ctx.name!r}: the server was not ready in time", where=ctx.where,
                                     fix="raise with.timeout_s")
            time.sleep(0.5)
        ctx.progress("server ready; asking")
        return _ask(ctx, f"{base}/v1", w, key)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
