"""bitsandbytes stays out of a process that quantizes nothing, and QLoRA imports it without
reaching for the Hugging Face Hub (stackwise.quantization; issue 14, item 21).

Each check runs in a fresh interpreter with HF_HUB_OFFLINE unset and every socket refused (and
recorded): on a CPU with AVX512-BF16, a plain `import bitsandbytes` asks huggingface.co for a kernel
and prints "kernels-community ... offline mode" warnings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

GUARD = """
import json, socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args[:2])[:200])
    raise OSError("network disabled by the test")
socket.getaddrinfo = refuse
socket.socket.connect = lambda self, address: refuse(address)
socket.create_connection = refuse
from stackwise.quantization import import_bitsandbytes, keep_bitsandbytes_out
"""


def _run(body: str) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    run = subprocess.run([sys.executable, "-c", GUARD + body + "\nprint(json.dumps(out))"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


def test_kept_out_peft_imports_without_bitsandbytes():
    out, stderr = _run("keep_bitsandbytes_out()\nimport peft, transformers\n"
                       "from peft.import_utils import is_bnb_available\n"
                       "out = {'bnb': sys.modules.get('bitsandbytes') is not None, 'peft_sees': is_bnb_available(),"
                       " 'attempts': attempts}")
    assert out == {"bnb": False, "peft_sees": False, "attempts": []}, (out, stderr[-2000:])
    assert "kernels-community" not in stderr


def test_qlora_imports_bitsandbytes_without_the_hub_even_after_keeping_it_out():
    out, stderr = _run("keep_bitsandbytes_out()\nimport peft\nbnb = import_bitsandbytes()\n"
                       "from peft.import_utils import is_bnb_4bit_available\n"
                       "out = {'bnb': hasattr(bnb.nn, 'Linear4bit'), 'peft_sees': is_bnb_4bit_available(),"
                       " 'kernels_back': sys.modules.get('kernels', 0) is not None, 'attempts': attempts}")
    assert out == {"bnb": True, "peft_sees": True, "kernels_back": True, "attempts": []}, (out, stderr[-2000:])
    assert "kernels-community" not in stderr and "offline mode" not in stderr, stderr[-2000:]
