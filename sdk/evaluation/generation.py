"""Generation quality against references: ROUGE-1/2/L (rouge-score, stemmed F-measure, mean over
examples), corpus BLEU and chrF (sacrebleu, default settings), all on a 0-100 scale for BLEU and
chrF and 0-1 for ROUGE, as the libraries report them."""

from __future__ import annotations

from ..registry import require

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(predictions: list[str], references: list[str]) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(mean F-measure per ROUGE type, per-example F-measures)."""
    scorer_mod = require("rouge_score.rouge_scorer", "eval", "the rouge suite")
    scorer = scorer_mod.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    rows = []
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref, pred)  # rouge-score takes (target, prediction)
        rows.append({t: scores[t].fmeasure for t in ROUGE_TYPES})
    n = max(len(rows), 1)
    return {t: sum(r[t] for r in rows) / n for t in ROUGE_TYPES}, rows


def bleu(predictions: list[str], references: list[str]) -> tuple[float, list[float]]:
    """(corpus BLEU, per-example sentence BLEU)."""
    sacrebleu = require("sacrebleu", "eval", "the bleu suite")
    corpus = sacrebleu.corpus_bleu(predictions, [references]).score
    per = [sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(predictions, references, strict=True)]
    return corpus, per


def chrf(predictions: list[str], references: list[str]) -> tuple[float, list[float]]:
    """(corpus chrF, per-example sentence chrF)."""
    sacrebleu = require("sacrebleu", "eval", "the chrf suite")
    corpus = sacrebleu.corpus_chrf(predictions, [references]).score
    per = [sacrebleu.sentence_chrf(p, [r]).score for p, r in zip(predictions, references, strict=True)]
    return corpus, per
