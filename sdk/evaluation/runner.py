"""Apply the chosen suites to one model: metrics (named `<suite>.<metric>`, or the suite's name
alone for single-number suites: perplexity, bleu, chrf) and one row per example for the table."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..errors import InputError
from ..rag import RAG_SUITES, SUITES_WITHOUT_RAG
from ..specs import EvaluateSpec
from ..progress import emit as emit_progress
from . import bias, generation, instructions, mmlu, qa, retrieval, safety
from .data import EvalData

Search = Callable[[str, int], list[tuple[str, str]]]  # (query, k) -> [(doc_id, text)], best first


class Answers:
    """Generated answers, one per distinct prompt, shared by the suites of one model."""

    def __init__(self, lm: Any, spec: EvaluateSpec):
        self.lm, self.spec, self.cache = lm, spec, {}

    def __call__(self, record: dict[str, Any], prompt_text: str | None = None) -> str:
        if "prediction" in record:
            return str(record["prediction"])
        prompt_text = prompt_text if prompt_text is not None else str(record["prompt"])
        if self.lm is None:
            raise InputError("this record has no `prediction` and no model was given to generate one",
                             where="evaluation data", fix="pass --model, or add `prediction` to each record")
        if prompt_text not in self.cache:
            self.cache[prompt_text] = self.lm.generate(prompt_text, self.spec.generation.max_new_tokens)
        return self.cache[prompt_text]


def run_model_suites(spec: EvaluateSpec, data: EvalData, lm: Any, search: Search | None,
                     label: str) -> tuple[dict[str, float], list[dict[str, Any]]]:
    metrics: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    answer = Answers(lm, spec)
    limit = spec.max_examples
    rag = getattr(lm, "is_rag", False)
    for suite in spec.suites:
        if suite == "retrieval":
            if rag:  # a RAG app's retriever (its index, filter, reranking) is part of what is evaluated
                found, suite_rows = run_retrieval(spec, data, lm.search_pairs, label)
                metrics.update(found)
                rows += suite_rows
            continue  # else it measures the index, not the model: run once by run_retrieval
        if rag and suite in SUITES_WITHOUT_RAG:
            raise InputError(f"the {suite} suite scores a model's likelihoods; {lm.ref} is a RAG app",
                             where="--suite", fix="evaluate RAG apps with " + ", ".join(RAG_SUITES))
        records = data.for_suite(suite, limit)
        if suite == "safety" and not records:
            records = [(-(i + 1), r) for i, r in enumerate(safety.RED_TEAM)][:limit]
        if not records:
            raise InputError(f"no record in {data.uri} carries the fields the {suite} suite needs",
                             where=data.uri, fix=_fields_help(suite))
        emit_progress(f"{label}: {suite}", 0, len(records))
        found, suite_rows = SUITES[suite](spec, records, lm, answer, search, data.uri)
        metrics.update(found)
        rows += [{"suite": suite, **row} for row in suite_rows]
        emit_progress(f"{label}: {suite}", len(records), len(records))
    return metrics, rows


def _fields_help(suite: str) -> str:
    from .data import NEEDS

    return f"{suite} uses records with " + " or ".join("{" + ", ".join(n) + "}" for n in NEEDS[suite])


def _perplexity(spec, records, lm, answer, search, uri):
    nlls = [(line, *lm.nll(str(r["text"]))) for line, r in records]
    total, count = sum(n for _, n, _ in nlls), sum(c for _, _, c in nlls)
    rows = [{"line": line, "tokens": c, "nll": round(n, 4), "perplexity": round(math.exp(n / c), 4) if c else None}
            for line, n, c in nlls]
    return {"perplexity": math.exp(total / count) if count else float("nan")}, rows


def _generation(kind):
    def run(spec, records, lm, answer, search, uri):
        preds = [answer(r) for _, r in records]
        refs = [str(r["reference"]) for _, r in records]
        if kind == "rouge":
            means, per = generation.rouge(preds, refs)
            rows = [{"line": line, "prediction": p, "reference": ref, **{k: round(v, 4) for k, v in s.items()}}
                    for (line, _), p, ref, s in zip(records, preds, refs, per)]
            return {f"rouge.{k}": v for k, v in means.items()}, rows
        corpus, per = (generation.bleu if kind == "bleu" else generation.chrf)(preds, refs)
        rows = [{"line": line, "prediction": p, "reference": ref, kind: round(v, 4)}
                for (line, _), p, ref, v in zip(records, preds, refs, per)]
        return {kind: corpus}, rows
    return run


def _qa(spec, records, lm, answer, search, uri):
    rows, em, f1, sup = [], [], [], []
    rag = getattr(lm, "is_rag", False)
    for line, r in records:
        question = str(r["question"])
        if rag:  # the app retrieves its own context: asked the question alone, judged on its own sources
            pred = answer(r, question)
            context = lm.context(question)
        else:
            context = r.get("context")
            if context is None and spec.index and search is not None:
                context = "\n\n".join(text for _, text in search(question, spec.k))
            prompt_text = (f"Answer using only the context.\n\nContext:\n{context}\n\n"
                           f"Question: {r['question']}\nAnswer:" if context else f"Question: {r['question']}\nAnswer:")
            pred = answer(r, prompt_text)
        gold = qa.gold_answers(r)
        row = {"line": line, "question": r["question"], "prediction": pred, "gold": gold,
               "exact_match": qa.exact_match(pred, gold), "f1": round(qa.token_f1(pred, gold), 4)}
        if rag:
            row["sources"] = lm.sources_of(question)
        em.append(row["exact_match"])
        f1.append(row["f1"])
        if context:
            row["supported"] = qa.supported(pred, str(context))
            sup.append(float(row["supported"]))
        rows.append(row)
    out = {"qa.exact_match": sum(em) / len(em), "qa.f1": sum(f1) / len(f1)}
    if sup:
        out["qa.supported"] = sum(sup) / len(sup)
    return out, rows


def _instruction(spec, records, lm, answer, search, uri):
    rows, prompt_ok, checks_ok, checks_n = [], 0, 0, 0
    for line, r in records:
        checks = instructions.validate_checks(r["checks"], f"{uri} line {line}")
        response = answer(r)
        result = instructions.check(response, checks)
        prompt_ok += all(result.values())
        checks_ok += sum(result.values())
        checks_n += len(result)
        rows.append({"line": line, "prediction": response, "checks": result, "passed": all(result.values())})
    return {"instruction.prompt_accuracy": prompt_ok / len(records),
            "instruction.check_accuracy": checks_ok / max(checks_n, 1)}, rows


def _mmlu(spec, records, lm, answer, search, uri):
    if lm is None:
        raise InputError("the mmlu suite scores a model", where="--model", fix="pass --model")
    rows, correct = [], 0
    for line, r in records:
        where = f"{uri} line {line}"
        choices = mmlu.choices_of(r, where)
        gold = mmlu.answer_index(r, len(choices), where)
        context = mmlu.prompt(str(r["question"]), choices, r.get("subject"))
        scores = lm.choice_logliks(context, [" " + mmlu.LETTERS[i] for i in range(len(choices))])
        chosen = max(range(len(choices)), key=scores.__getitem__)
        correct += chosen == gold
        rows.append({"line": line, "answer": mmlu.LETTERS[gold], "chosen": mmlu.LETTERS[chosen],
                     "correct": chosen == gold, "logliks": [round(s, 4) for s in scores]})
    return {"mmlu.accuracy": correct / len(records)}, rows


def _safety(spec, records, lm, answer, search, uri):
    rows = []
    for line, r in records:
        response = answer(r)
        rows.append({"line": line, "prompt": r["prompt"], "category": r.get("category", ""),
                     "harmful": bool(r["harmful"]), "prediction": response,
                     "refused": safety.refused(response), "unsafe": safety.unsafe(response)})
    return {f"safety.{k}": v for k, v in safety.rates(rows).items()}, rows


def _bias(spec, records, lm, answer, search, uri):
    y_true, y_pred, groups, rows = [], [], [], []
    for line, r in records:
        if "prediction" in r:
            pred = int(r["prediction"])
        else:
            if lm is None:
                raise InputError("bias records without `prediction` need a model", where=f"{uri} line {line}",
                                 fix="pass --model")
            choices = [str(c) for c in r["choices"]]
            if len(choices) != 2:
                raise InputError("a bias record's `choices` must be [negative, positive]", where=f"{uri} line {line}",
                                 fix='e.g. "choices": ["no", "yes"]')
            scores = lm.choice_logliks(str(r["prompt"]), [" " + c for c in choices])
            pred = int(scores[1] > scores[0])
        y_true.append(int(r["label"]))
        y_pred.append(pred)
        groups.append(str(r["group"]))
        rows.append({"line": line, "group": groups[-1], "label": y_true[-1], "prediction": pred})
    result = bias.evaluate(y_true, y_pred, groups, [r.get("privileged") for _, r in records], where=uri)
    for row in rows:
        row.update(backend=result.backend, reference=result.reference, privileged=row["group"] in result.privileged)
    return {f"bias.{k}": v for k, v in result.metrics.items()}, rows


def run_retrieval(spec: EvaluateSpec, data: EvalData, search: Search | None,
                  label: str = "retrieval") -> tuple[dict[str, float], list[dict]]:
    """Retrieval metrics of `search` (the spec's index, or a RAG app's retriever). Without a search
    (no index in the spec: only RAG apps are measured, by run_model_suites) there is nothing to do."""
    if search is None:
        return {}, []
    records = data.for_suite("retrieval", spec.max_examples)
    if not records:
        raise InputError(f"no record in {data.uri} has `query` and `relevant`", where=data.uri,
                         fix='e.g. {"query": "...", "relevant": ["doc-1.txt"]}')
    k = spec.k
    rows, rec, rr, nd = [], [], [], []
    emit_progress(label if label == "retrieval" else f"{label}: retrieval", 0, len(records))
    for line, r in records:
        relevant = {str(x) for x in (r["relevant"] if isinstance(r["relevant"], list) else [r["relevant"]])}
        # Several chunks of one document may rank high: ask for more chunks, rank unique documents.
        hits = search(str(r["query"]), k * 4)
        ranked = retrieval.ranked_labels([doc_id for doc_id, _ in hits], relevant)[:k]
        row = {"line": line, "query": r["query"], "relevant": sorted(relevant), "ranked": ranked,
               f"recall_at_{k}": retrieval.recall_at_k(ranked, relevant, k),
               "reciprocal_rank": retrieval.reciprocal_rank(ranked, relevant, k),
               f"ndcg_at_{k}": retrieval.ndcg_at_k(ranked, relevant, k)}
        rec.append(row[f"recall_at_{k}"])
        rr.append(row["reciprocal_rank"])
        nd.append(row[f"ndcg_at_{k}"])
        rows.append({"suite": "retrieval", **row})
    emit_progress(label if label == "retrieval" else f"{label}: retrieval", len(records), len(records))
    n = len(records)
    return {f"retrieval.recall_at_{k}": sum(rec) / n, "retrieval.mrr": sum(rr) / n,
            f"retrieval.ndcg_at_{k}": sum(nd) / n}, rows


def model_roles(spec: EvaluateSpec) -> list[tuple[str, str | None]]:
    """(role, reference) of every model the spec evaluates, in report order: candidate, baseline
    (None when absent), then compare-1, compare-2, ... for `spec.compare`."""
    return [("candidate", spec.model), ("baseline", spec.baseline),
            *((f"compare-{i}", ref) for i, ref in enumerate(spec.compare, 1))]


SUITES: dict[str, Callable] = {
    "perplexity": _perplexity, "rouge": _generation("rouge"), "bleu": _generation("bleu"),
    "chrf": _generation("chrf"), "qa": _qa, "instruction": _instruction, "mmlu": _mmlu,
    "safety": _safety, "bias": _bias,
}
