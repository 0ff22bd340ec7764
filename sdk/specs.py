"""Typed job specs. A spec is the whole description of a job: it is hashed, stored with the
job record, written to `spec.json`, and read back by the workload inside the job.

Over ~400 lines on purpose: every job spec and its parts in one module, the single definition the
workloads, adapters, CLI and pipelines read.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from .curation.config import CurationConfig

INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


RUN_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,11}$")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _JobSpec(_Spec):
    """What every job spec shares: its identity.

    A job's identity is `<kind>-<digest>`: the digest hashes the whole spec, `run_name` included.
    Submitting a spec whose job is PENDING or RUNNING returns that job (on every stack); after it
    ended, submitting it again starts the next attempt of the same identity, which resumes from
    the checkpoints earlier attempts left (they live under the identity, not the attempt). A
    different `run_name` (or `--new`, a random one) is a different identity: a fresh run.
    """

    run_name: str | None = Field(None, description="Names a run of an otherwise identical spec: 1-12 lowercase "
                                 "letters, digits or '-'. Another run name is another identity (a fresh run).")

    @model_validator(mode="after")
    def _valid_run_name(self) -> "_JobSpec":
        if self.run_name is not None and not RUN_NAME.fullmatch(self.run_name):
            raise ValueError(f"run_name {self.run_name!r} is invalid: use 1-12 lowercase letters, digits or '-', "
                             "starting with a letter or digit")
        return self

    def digest(self) -> str:
        """A stable hash of the spec (16 hex digits): names the job and its outputs, so a rerun resumes them.

        A spec without a run name hashes as it did before run names existed."""
        exclude = {"run_name"} if self.run_name is None else None
        return hashlib.sha256(self.model_dump_json(exclude=exclude).encode()).hexdigest()[:16]

    @property
    def identity(self) -> str:
        """`<kind>-<digest>`: the same for every attempt of this spec, on every stack."""
        return f"{self.kind}-{self.digest()}"  # type: ignore[attr-defined]

    def preflight(self) -> None:
        """Check the job's local input before it is submitted (stackwise.preflight): a missing or
        unreadable source, dataset, base or evaluation file raises its InputError or SpecError
        (exit 2) now rather than failing the job. The CLI runs it before every submit."""
        from .preflight import CHECKS

        CHECKS[self.kind](self)  # type: ignore[attr-defined]


class Chunking(_Spec):
    """How documents are cut into chunks (sizes in characters)."""

    size: Annotated[int, Field(ge=50, le=20_000)] = 1000
    overlap: Annotated[int, Field(ge=0)] = 150

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "Chunking":
        if self.overlap >= self.size:
            raise ValueError(f"chunking.overlap ({self.overlap}) must be smaller than chunking.size ({self.size})")
        return self


class Embedding(_Spec):
    """The embedding model: a short name of a model a package ships, a Hugging Face id, or a path."""

    model: str = "all-MiniLM-L6-v2"
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 64
    device: str = "cpu"
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        "auto", description="What runs the model: torch (sentence-transformers), onnx (ONNX Runtime, fp32, CPU), "
        "onnx-int8 (int8 weights: faster, vectors move ~1%), or auto: onnx on CPU where onnxruntime is "
        "installed and the model exports faithfully, else torch (STACKWISE_EMBED_BACKEND sets what auto picks).")

    @model_serializer(mode="wrap")
    def _omit_default_backend(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A spec that leaves the backend at auto hashes as it did before the field existed, so jobs
        # submitted before keep their identity (and resume their checkpoints).
        data = handler(self)
        if self.backend == "auto":
            data.pop("backend", None)
        return data


class Compute(_Spec):
    """Portable compute: a catalog GPU name (or none for CPU), count, nodes, spot."""

    gpu: str | None = None
    count: Annotated[int, Field(ge=1)] = 1
    nodes: Annotated[int, Field(ge=1)] = 1
    spot: bool = False
    max_runtime_s: Annotated[int, Field(ge=60)] = 24 * 3600


class IndexSpec(_JobSpec):
    """Index documents into a named index of the stack's vector store."""

    kind: Literal["index"] = "index"
    source: str = Field(description="A file, folder or glob; a local path or any fsspec URI.")
    index: str = Field(description="Index name: lowercase letters, digits, '-' and '_'.")
    chunking: Chunking = Chunking()
    embedding: Embedding = Embedding()
    prune: bool = Field(False, description="Remove chunks of documents under `source` that are gone.")
    follow_links: bool = Field(False, description="Under a folder or glob, also read symbolic links that "
                               "lead outside it (by default they are skipped and reported).")
    workers: Annotated[int, Field(ge=1, le=256, description="Processes (local) or instances (cloud) that "
                                  "index the source in parallel, each the documents of one shard.")] = 1
    compute: Compute = Compute()
    curation: CurationConfig | None = Field(None, description="Curate documents before chunking (dedup, quality, "
                                            "language, PII, bias screen; docs/curation.md); None: off.")

    @model_validator(mode="after")
    def _valid_index_name(self) -> "IndexSpec":
        if not INDEX_NAME.fullmatch(self.index):
            raise ValueError(
                f"index name {self.index!r} is invalid: use 1-63 lowercase letters, digits, '-' or '_', "
                "starting with a letter or digit"
            )
        if self.compute.nodes not in (1, self.workers):
            raise ValueError(
                f"compute.nodes ({self.compute.nodes}) differs from workers ({self.workers}): an index job "
                "runs one node per worker; set workers instead of nodes"
            )
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_follow_links(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out while False (None), so a spec that does not set it keeps its JSON, digest and identity.
        data = handler(self)
        if not self.follow_links:
            data.pop("follow_links", None)
        if self.curation is None:
            data.pop("curation", None)
        return data


# -- fine-tuning -------------------------------------------------------------------------------
FinetuneMethod = Literal["lora", "qlora", "full"]
Strategy = Literal["none", "ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"]


class LoraParams(_Spec):
    """LoRA adapter parameters (used by `lora` and `qlora`)."""

    r: Annotated[int, Field(ge=1, le=1024, description="Adapter rank.")] = 16
    alpha: Annotated[float, Field(gt=0, description="Scaling numerator: the update is scaled by alpha / r.")] = 32
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names to adapt, or 'all-linear'.",
    )

    @model_validator(mode="after")
    def _some_targets(self) -> "LoraParams":
        if isinstance(self.target_modules, list) and not [m for m in self.target_modules if m.strip()]:
            raise ValueError("lora.target_modules is empty: name modules (e.g. q_proj, v_proj) or use 'all-linear'")
        return self


class Quantization(_Spec):
    """4-bit quantization of the frozen base (used by `qlora`; bitsandbytes)."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class Training(_Spec):
    """The optimisation loop. Give `epochs` or `max_steps` (max_steps wins when both are set)."""

    epochs: Annotated[float, Field(gt=0, le=1000)] | None = None
    max_steps: Annotated[int, Field(ge=1)] | None = None
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 2e-4
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: Annotated[float, Field(ge=0, le=0.5)] = 0.03
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    batch_size: Annotated[int, Field(ge=1, le=4096, description="Sequences per device per step.")] = 4
    gradient_accumulation: Annotated[int, Field(ge=1, le=4096)] = 1
    max_seq_length: Annotated[int, Field(ge=8, le=1_048_576, description="Tokens per sequence.")] = 512
    packing: bool = Field(False, description="Concatenate examples into full-length sequences.")
    seed: int = 42
    eval_fraction: Annotated[float, Field(gt=0, lt=0.5, description="Held-out share of the dataset.")] = 0.1
    eval_max_examples: Annotated[int, Field(ge=1)] = 200
    checkpoint_every: Annotated[int, Field(ge=1, description="Save a resumable checkpoint every N steps.")] = 50
    logging_every: Annotated[int, Field(ge=1)] = 5
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _length_of_run(self) -> "Training":
        if self.epochs is None and self.max_steps is None:
            self.epochs = 1.0
        return self


class TrainCompute(Compute):
    """Compute for training: `count` devices (GPUs, or CPU processes without a GPU) on each of
    `nodes` nodes, and how the processes share the work."""

    strategy: Strategy | None = Field(
        None, description="none, ddp, fsdp, deepspeed-zero2 or deepspeed-zero3; default: ddp for "
        "more than one process, else none."
    )

    @property
    def processes(self) -> int:
        return self.count * self.nodes

    @model_validator(mode="after")
    def _strategy_fits(self) -> "TrainCompute":
        if self.strategy is None:
            self.strategy = "ddp" if self.processes > 1 else "none"
        if self.strategy == "none" and self.processes > 1:
            raise ValueError(
                f"strategy 'none' runs one process, but count x nodes is {self.processes}: "
                "use ddp, fsdp, deepspeed-zero2 or deepspeed-zero3"
            )
        return self


class FineTuneSpec(_JobSpec):
    """Fine-tune a causal language model on a JSONL dataset (LoRA, QLoRA or full)."""

    kind: Literal["finetune"] = "finetune"
    base: str = Field(description="A short name of a model a package ships (smollm2-135m-instruct), a "
                      "Hugging Face id, a local path or fsspec URI, or a registry reference models:/NAME/VERSION.")
    data: str = Field(description="JSONL with `text`, `prompt`/`completion`, or chat `messages`; any fsspec URI.")
    method: FinetuneMethod = "lora"
    lora: LoraParams = LoraParams()
    quantization: Quantization = Quantization()
    training: Training = Training()
    chat_template: bool = Field(True, description="Render prompt/completion and messages with the "
                                "tokenizer's chat template when it has one.")
    merge: bool = Field(False, description="Also save the base model with the adapter merged in.")
    name: str | None = Field(None, description="Registered model name (default: finetune-<base>).")
    compute: TrainCompute = TrainCompute()
    curation: CurationConfig | None = Field(None, description="Curate the records before training (dedup, "
                                            "quality, language, PII, bias screen; docs/curation.md); None: off.")
    licence: str | None = Field(None, description="The base's licence id (docs/models.md), for a base the model "
                                "catalog does not know; checked against the stack's allowedLicenses.")

    @model_serializer(mode="wrap")
    def _omit_unset_curation(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out while None, so a spec without them keeps its JSON, digest and identity.
        data = handler(self)
        for key in ("curation", "licence"):
            if getattr(self, key) is None:
                data.pop(key, None)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "FineTuneSpec":
        if not self.base.strip():
            raise ValueError("base is empty: name a model (e.g. smollm2-135m-instruct, a path or a Hugging Face id)")
        if not self.data.strip():
            raise ValueError("data is empty: name a JSONL file (a path or fsspec URI)")
        if self.name is not None and not INDEX_NAME.fullmatch(self.name):
            raise ValueError(
                f"name {self.name!r} is invalid: use 1-63 lowercase letters, digits, '-' or '_'"
            )
        if self.method == "full" and self.merge:
            raise ValueError("merge applies to lora and qlora; a full fine-tune already saves the whole model")
        if self.method == "qlora" and self.compute.strategy in ("fsdp", "deepspeed-zero3"):
            raise ValueError(
                f"qlora with strategy {self.compute.strategy} is not supported: 4-bit weights cannot be "
                "sharded here; use ddp or deepspeed-zero2"
            )
        return self

    @property
    def model_name(self) -> str:
        """The registered model name: `name`, else `finetune-<last part of base>`."""
        if self.name:
            return self.name
        tail = self.base.rstrip("/").rsplit("/", 1)[-1].lower()
        return ("finetune-" + re.sub(r"[^a-z0-9_-]+", "-", tail).strip("-"))[:63] or "finetune"

    @property
    def output_name(self) -> str:
        """`<model name>-<digest>`: the folder of this identity's outputs and checkpoints under
        `<artifact store>/finetune/`, shared by all its attempts."""
        return f"{self.model_name}-{self.digest()}"



# -- evaluation --------------------------------------------------------------------------------
EVAL_SUITES = ("perplexity", "rouge", "bleu", "chrf", "qa", "retrieval", "instruction", "mmlu", "safety", "bias")


class Generation(_Spec):
    """How suites that need an answer generate it: greedy decoding, bounded length."""

    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 64
    chat_template: bool = Field(True, description="Wrap prompts in the tokenizer's chat template when it has one.")


class EvaluateSpec(_JobSpec):
    """Evaluate a model (and optionally a baseline) with named suites on one JSONL dataset.

    Each suite uses the records that carry its fields (see docs/evaluation.md); a record may name
    its suite with `"suite": "mmlu"`. Results go to one MLflow run per model evaluated, a
    per-example table, and an HTML + Markdown report comparing candidate and baseline (and the
    `compare` models, as more columns).

    Any model may be a RAG app (`rag:NAME`, `rag:NAME@ALIAS`, `rag:NAME/VERSION`): it answers each
    prompt by retrieval + its template + its generator; `qa.supported` is judged on the sources it
    retrieved and `retrieval` measures its own retriever (so `index` is optional then). RAG apps have
    no likelihoods: `perplexity`, `mmlu` and `bias` are refused for them."""

    kind: Literal["evaluate"] = "evaluate"
    model: str | None = Field(None, description="The candidate: a shipped short name, a path or URI, a Hugging Face "
                              "id, a registry reference models:/NAME/VERSION or models:/NAME@ALIAS, or a RAG app "
                              "rag:NAME[@ALIAS|/VERSION]. Only `retrieval` runs without a model.")
    baseline: str | None = Field(None, description="A second model evaluated on the same data, for comparison.")
    compare: list[str] = Field(default_factory=list, description="More models (any reference `model` takes) "
                               "evaluated on the same data and shown beside candidate and baseline in the report.")
    suites: list[str] = Field(description=f"Suites to run: {', '.join(EVAL_SUITES)}.")
    data: str = Field(description="Evaluation records (JSONL; MMLU CSV for `mmlu`); a path or any fsspec URI.")
    index: str | None = Field(None, description="The index `retrieval` measures and `qa` retrieves context from.")
    k: Annotated[int, Field(ge=1, le=1000)] = 5
    train_data: list[str] = Field(default_factory=list, description="Training datasets to check for leakage, "
                                  "besides those the registry's lineage names.")
    allow_leakage: bool = Field(False, description="Report, but do not refuse, evaluation records found in training data.")
    max_examples: Annotated[int, Field(ge=1)] | None = Field(None, description="Records per suite at most.")
    max_seq_length: Annotated[int, Field(ge=8, le=1_048_576)] = 512
    generation: Generation = Generation()
    compute: Compute = Compute()

    @model_validator(mode="after")
    def _consistent_eval(self) -> "EvaluateSpec":
        if not self.suites:
            raise ValueError(f"no suite given: choose from {', '.join(EVAL_SUITES)}")
        unknown = [s for s in self.suites if s not in EVAL_SUITES]
        if unknown:
            raise ValueError(f"unknown suite {unknown[0]!r}: choose from {', '.join(EVAL_SUITES)}")
        self.suites = list(dict.fromkeys(self.suites))
        if not self.data.strip():
            raise ValueError("data is empty: name a JSONL file of evaluation records")
        if self.model is None and set(self.suites) - {"retrieval"}:
            raise ValueError("model is missing: every suite but retrieval evaluates a model")
        if self.compare and not self.model:
            raise ValueError("compare needs a candidate model: pass model too")
        if any(not r.strip() for r in self.compare) or len(self.compare) > 8 or \
                len(set(self.compare)) < len(self.compare) or {self.model, self.baseline} & set(self.compare):
            raise ValueError("compare takes 1-8 model references, each evaluated once (none repeated, none "
                             "equal to model or baseline)")
        refs = [r for r in (self.model, self.baseline, *self.compare) if r]
        rags = [r for r in refs if r.startswith("rag:")]
        if rags:
            from .rag import REF, SUITES_WITHOUT_RAG

            bad = next((r for r in rags if not REF.fullmatch(r)), None)
            if bad is not None:
                raise ValueError(f"{bad!r} is not a RAG app reference: write rag:NAME, rag:NAME@ALIAS or rag:NAME/3")
            refused = [s for s in self.suites if s in SUITES_WITHOUT_RAG]
            if refused:
                raise ValueError(f"the {refused[0]} suite scores likelihoods, which the RAG app {rags[0]} does not "
                                 "have: evaluate it in a separate run, or leave that suite out")
        if "retrieval" in self.suites and not self.index and not rags:
            raise ValueError("the retrieval suite needs index: the name of the index to measure")
        if self.index is not None and not INDEX_NAME.fullmatch(self.index):
            raise ValueError(f"index name {self.index!r} is invalid")
        return self

    @model_serializer(mode="wrap")
    def _omit_empty_compare(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out while empty, so a spec without it keeps its JSON, digest and job identity.
        data = handler(self)
        if not self.compare:
            data.pop("compare", None)
        return data



#: Every job spec, told apart by `kind`: what a job record, a spec file and `submit` accept.
JobSpec = Annotated[IndexSpec | FineTuneSpec | EvaluateSpec, Field(discriminator="kind")]
JOB_SPECS: tuple[type[_JobSpec], ...] = (IndexSpec, FineTuneSpec, EvaluateSpec)
_JOB_SPEC_ADAPTER: Any = None


def parse_job_spec(data: Any) -> IndexSpec | FineTuneSpec | EvaluateSpec:
    """A job spec from its JSON text, bytes or dict, the model chosen by its `kind`.

    Raises pydantic's ValidationError (a ValueError) on anything else, an unknown kind included."""
    global _JOB_SPEC_ADAPTER
    if _JOB_SPEC_ADAPTER is None:
        from pydantic import TypeAdapter

        _JOB_SPEC_ADAPTER = TypeAdapter(JobSpec)
    if isinstance(data, (str, bytes)):
        return _JOB_SPEC_ADAPTER.validate_json(data)
    return _JOB_SPEC_ADAPTER.validate_python(data)


_SPEC_DOCS = {"finetune": "docs/finetune.md", "evaluate": "docs/evaluation.md", "index": "docs/vector-store.md"}


def read_spec_file(path: str, spec_type: type[_JobSpec]) -> Any:
    """A job spec from a file a user wrote: JSON when it ends in `.json`, else YAML (the project's
    bounded loader, `stackwise.userinput`), validated as `spec_type`.

    A relative local `data` path, and a relative `base` path that exists, are read relative to the
    spec file's folder (as a gate file's `data` is) and made absolute, so the job finds them and
    the spec keeps one digest wherever it is submitted from. Any problem (unreadable, not UTF-8,
    bad syntax, not a mapping, an invalid field) raises `SpecError` naming the file (and the key or
    line)."""
    import json
    from pathlib import Path

    from pydantic import ValidationError

    from .errors import SpecError
    from .userinput import load_yaml, read_text, shorten

    kind = spec_type.model_fields["kind"].default
    text = read_text(path, error=SpecError, what="spec file", fix="check the path given to --spec")
    if str(path).lower().endswith(".json"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"spec file is not valid JSON: {exc.msg}", where=f"{path} line {exc.lineno}",
                            fix="fix the JSON syntax") from None
        except RecursionError:
            raise SpecError("spec file nests too deep to read", where=str(path), fix="fix the file") from None
    else:
        raw = load_yaml(text, str(path), SpecError, what="spec file")
    if not isinstance(raw, dict):
        raise SpecError(f"a {kind} spec file must be a mapping of fields, got {shorten(raw)}", where=str(path),
                        fix=f"write one field per line, e.g. data: train.jsonl (the fields: {_SPEC_DOCS[kind]})")
    folder = Path(path).expanduser().resolve().parent
    for key, must_exist in (("data", False), ("base", True)):
        value = raw.get(key)
        if isinstance(value, str) and value.strip() and "://" not in value:
            local = (folder / Path(value).expanduser()).resolve()
            if not must_exist or local.exists():
                raw[key] = str(local)
    try:
        return spec_type.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(spec)"
        raise SpecError(f"{key[:80]}: " + first["msg"].removeprefix("Value error, "), where=f"{path}: {key[:80]}",
                        fix=f"correct that field (the fields: {_SPEC_DOCS[kind]})") from None
