"""A real standalone Milvus server for tests, from the PyPI package `milvus` (2.3.x).

The package ships the Milvus binary and a config template. Three fixes make it run offline and
beside other servers: every `ip:` is set to 127.0.0.1 (by default Milvus advertises the first
unicast address), embedded etcd gets free ports, and with a custom template the glog config
path must be set by hand. Start-up takes 3-60 s, so tests start one server per session.
"""

from __future__ import annotations

import re
import socket
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_milvus(data_dir: Path, timeout_s: float = 180.0):
    """Start Milvus with its data under `data_dir`; returns (server, "http://127.0.0.1:PORT", seconds)."""
    import milvus

    package = Path(milvus.__file__).parent / "data"
    template = re.sub(r"(?m)^(\s+)ip:.*$", r"\1ip: 127.0.0.1", (package / "config.yaml.template").read_text())
    # Embedded etcd listens on 2379/2380 unless told otherwise, so a second server (another
    # test session, a developer's) would fail to start: give it free ports of its own.
    scratch = data_dir / "stackwise-config"
    scratch.mkdir(parents=True, exist_ok=True)
    client, peer = _free_port(), _free_port()
    etcd_config = scratch / "embed-etcd.yaml"
    etcd_config.write_text(
        f"listen-client-urls: http://127.0.0.1:{client}\nadvertise-client-urls: http://127.0.0.1:{client}\n"
        f"listen-peer-urls: http://127.0.0.1:{peer}\ninitial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
        f"initial-cluster: default=http://127.0.0.1:{peer}\n"
    )
    template = template.replace("  use:\n    embed: true", f"  config:\n    path: {etcd_config}\n  use:\n    embed: true", 1)
    assert str(etcd_config) in template, "the milvus config template changed: update tests/servers/milvus_server.py"
    template_file = scratch / "config.yaml.template"
    template_file.write_text(template)
    config = milvus.MilvusServerConfig(template=str(template_file), data_dir=str(data_dir))
    config.glog_conf_file = str(package / "glog.conf")
    server = milvus.MilvusServer(config, wait_for_started=False)
    server.start()
    started = time.monotonic()
    try:
        server.wait_started(timeout=int(timeout_s * 1000))
    except BaseException:
        server.stop()
        raise
    port = config.get("proxy_port")
    return server, f"http://127.0.0.1:{port}", time.monotonic() - started


if __name__ == "__main__":
    import sys

    srv, uri, took = start_milvus(Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()))
    print(uri, f"started in {took:.1f}s", flush=True)
    try:
        srv.wait()
    finally:
        srv.stop()
