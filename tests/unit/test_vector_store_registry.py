"""Vector store kinds are declared once, in `stackwise.registry.VECTOR_STORES`.

Adding a store is a registry entry plus its adapter module: shown with two test-only kinds
(tests/unit/fake_vector_store.py) that a fresh interpreter registers before anything else
reads the registry, as an entry in sdk/registry.py would be; the contract, a local stack's
resolution, `open_store` and the infra config then take them, with no other code changed.
A fresh interpreter, not a monkeypatch of this one: the models' `kind` Literals are built
from the registry when their modules load, and this process loaded them long ago. And no
module of sdk/, adapters/ or infra/ but the registry spells out a list of the kinds.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from stackwise.registry import VECTOR_STORES, Placement

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# What a new store adds to shared code: its entries in the registry, nothing else.
REGISTER = """
from stackwise.registry import VECTOR_STORES, StoreRef

VECTOR_STORES["fakedisk"] = StoreRef("fake_vector_store:DiskStore", "local", "embedded")
VECTOR_STORES["fakecluster"] = StoreRef("fake_vector_store:ClusterStore", "local", "external")
"""


def _run(body: str, cwd: Path) -> dict:
    """Run REGISTER then `body` in a fresh interpreter in `cwd`; return the JSON it prints last."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKWISE_")}
    env["STACKWISE_HOME"] = str(cwd / ".stackwise")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", REGISTER + textwrap.dedent(body)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _local_stacks(root: Path, stacks: dict[str, str]) -> None:
    (root / "Pulumi.yaml").write_text("name: demo\nruntime: python\n")
    (root / "stacks").mkdir()
    for name, vector_store in stacks.items():
        (root / "stacks" / f"Pulumi.{name}.yaml").write_text(
            f"config:\n  stackwise:cloud: local\n  stackwise:vectorStore: {vector_store}\n")


def test_a_new_store_kind_is_a_registry_entry_and_its_adapter(isolated):
    cluster = isolated / "cluster"
    host = f"http://cluster.test/?root={cluster}"
    _local_stacks(isolated, {
        "disk": "{kind: fakedisk, path: vecs}",
        "cluster": f"{{kind: fakecluster, host: '{host}', apiKeySecret: env://FAKE_KEY}}",
        "bad": "{kind: fakecluster}",
    })
    report = _run("""
        import json

        from stackwise.contract import VectorStoreOutput
        from stackwise.errors import ConfigError
        from stackwise.infra.config import VectorStoreConfig
        from stackwise.stack import load_stack
        from stackwise.vectors import Record, open_store

        report = {"contract": VectorStoreOutput(kind="fakedisk", uri="/v").kind}
        for name in ("disk", "cluster"):
            output = load_stack(name).outputs.vector_store
            store = open_store(output)
            store.create_index("kb", 2, "m")
            store.upsert("kb", [Record(id="a", vector=[1.0, 0.0], text="alpha", doc_id="d1")])
            report[name] = {"output": output.model_dump(), "adapter": type(store).__name__,
                            "given": getattr(store, "config", output).model_dump(),
                            "hits": [h.id for h in store.query("kb", [1.0, 0.0], k=1)]}
        try:
            load_stack("bad").outputs
        except ConfigError as exc:
            report["bad"] = exc.fix
        report["infra"] = VectorStoreConfig(kind="fakecluster", host="https://cluster.test").host
        for kwargs in ({"kind": "fakecluster"}, {"kind": "fakedisk", "host": "https://cluster.test"}):
            try:
                VectorStoreConfig(**kwargs)
            except ValueError as exc:
                report.setdefault("infra_refused", []).append(str(exc))
        print(json.dumps(report))
    """, isolated)

    assert report["contract"] == "fakedisk"
    disk = report["disk"]
    assert disk["output"] == {"kind": "fakedisk", "uri": str((isolated / ".stackwise" / "vecs").resolve()),
                              "host": None, "api_key_secret": None}
    assert (disk["adapter"], disk["hits"]) == ("DiskStore", ["a"])
    assert (isolated / ".stackwise" / "vecs").is_dir()
    remote = report["cluster"]
    assert remote["output"] == {"kind": "fakecluster", "uri": None, "host": host, "api_key_secret": "env://FAKE_KEY"}
    assert (remote["adapter"], remote["given"], remote["hits"]) == ("ClusterStore", remote["output"], ["a"])
    assert cluster.is_dir()
    assert "{kind: embedded|fakedisk, path: vectors}" in report["bad"]
    assert "{kind: pinecone|weaviate|milvus|fakecluster, host: URL" in report["bad"]
    assert report["infra"] == "https://cluster.test"
    needs_host, not_external = report["infra_refused"]
    assert "kind fakecluster needs host" in needs_host
    assert "are for weaviate or milvus or fakecluster clusters, not kind fakedisk" in not_external


def test_an_unregistered_kind_is_refused_everywhere(isolated):
    # The control: the same kinds without their registry entries.
    from stackwise.contract import VectorStoreOutput
    from stackwise.errors import ConfigError
    from stackwise.infra.config import VectorStoreConfig
    from stackwise.stack import load_stack

    with pytest.raises(ValidationError):
        VectorStoreOutput(kind="fakedisk", uri="/v")
    with pytest.raises(ValidationError):
        VectorStoreConfig(kind="fakecluster", host="https://cluster.test")
    _local_stacks(isolated, {"disk": "{kind: fakedisk, path: vecs}"})
    with pytest.raises(ConfigError, match="embedded store or a hosted one"):
        load_stack("disk").outputs


def test_a_cloud_stack_exports_a_new_external_store(isolated):
    pytest.importorskip("pulumi_aws", reason="pip install 'stackwise[infra]'")
    report = _run(f"""
        import json

        from stackwise.infra.config import InfraConfig
        from stackwise.infra.offline import run_offline
        from stackwise.stack import _read_config

        path = {str(REPO / "stacks" / "Pulumi.dev-aws.yaml")!r}
        raw = _read_config(open(path, encoding="utf-8").read(), path)
        raw["vectorStore"] = {{"kind": "fakecluster", "host": "https://cluster.test",
                              "apiKeySecret": "env://FAKE_KEY"}}
        run = run_offline(InfraConfig.load(raw, path), "dev-aws")
        print(json.dumps(run.outputs.vector_store.model_dump()))
    """, isolated)
    assert report == {"kind": "fakecluster", "uri": None, "host": "https://cluster.test",
                      "api_key_secret": "env://FAKE_KEY"}


# -- no other list of the kinds ---------------------------------------------------------------------
def _kind_lists(source: str, kinds: set[str]) -> list[str]:
    """Places in Python `source` that spell out two or more store kinds: a tuple, list or set of
    them (a Literal's too), a dict keyed by them, `or`-ed comparisons with them, or a string
    that joins them with '|' (as a message listing the kinds would)."""

    def named(nodes) -> set[str]:
        return {n.value for n in nodes if isinstance(n, ast.Constant) and n.value in kinds}

    alternatives = "|".join(map(re.escape, sorted(kinds)))
    joined = re.compile(rf"\b({alternatives})\s*\|\s*({alternatives})\b")
    found = []
    for node in ast.walk(ast.parse(source)):
        hit = None
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(named(node.elts)) >= 2:
            hit = "a collection"
        elif isinstance(node, ast.Dict) and len(named(k for k in node.keys if k is not None)) >= 2:
            hit = "a dict"
        elif isinstance(node, ast.BoolOp) and len(named(c for v in node.values if isinstance(v, ast.Compare)
                                                         for c in [v.left, *v.comparators])) >= 2:
            hit = "comparisons"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and joined.search(node.value):
            hit = "a string"
        if hit:
            found.append(f"line {node.lineno}: {hit}")
    return found


def test_the_scan_sees_the_lists_it_forbids():
    kinds = {"embedded", "pinecone", "weaviate", "milvus"}
    bad = {
        'kind: Literal["embedded", "pinecone", "weaviate", "milvus"] = "embedded"\n': "a collection",
        'external = kind in ("weaviate", "milvus")\n': "a collection",
        'x = {"pinecone": 1, "milvus": 2}\n': "a dict",
        'ok = kind == "weaviate" or kind == "milvus"\n': "comparisons",
        'fix = "{kind: pinecone|weaviate|milvus, host: URL}"\n': "a string",
    }
    for source, what in bad.items():
        assert _kind_lists(source, kinds) == [f"line 1: {what}"], source
    fine = ('if kind == "embedded":\n    pass\n'
            'keys = ("documents", "chunks", "embedded")\n'
            'require("pinecone", "pinecone", "the Pinecone vector store")\n')
    assert _kind_lists(fine, kinds) == []


def test_no_module_but_the_registry_lists_the_store_kinds():
    kinds = set(VECTOR_STORES)
    registry = REPO / "sdk" / "registry.py"
    offenders = {}
    for folder in ("sdk", "adapters", "infra"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == registry or "__pycache__" in path.parts:
                continue
            found = _kind_lists(path.read_text(encoding="utf-8"), kinds)
            if found:
                offenders[str(path.relative_to(REPO))] = found
    assert not offenders, f"derive these from stackwise.registry.VECTOR_STORES: {offenders}"


def test_every_registered_store_has_its_module_and_its_extra():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    in_all = set(re.search(r"\[(.*)\]", extras["all"][0]).group(1).split(","))
    for kind, ref in VECTOR_STORES.items():
        module = ref.path.partition(":")[0]
        assert importlib.util.find_spec(module) is not None, (kind, module)
        assert ref.extra in extras and ref.extra in in_all, (kind, ref.extra)
        assert ref.placement in typing.get_args(Placement), (kind, ref.placement)
