"""Curation on real text nobody here wrote (gensim's Lee corpus, the Python docs, GnuPG's Italian help,
Bulgarian Wikipedia from gensim's test data), with planted duplicates, edited copies, PII and
other-language paragraphs. Each detector's recall and precision is printed (pytest -s) and held to a floor.

References are independent of the code under test: exact duplicates by Python string equality after
whitespace/case folding, near-duplicates by the exact Jaccard of shingle sets (not MinHash), PII by
what was planted (valid Luhn cards, valid IBANs, ...), languages by where the text came from."""

from __future__ import annotations

import bz2
import random
import re
from pathlib import Path

import pytest

from stackwise.curation import CurationConfig, Item, curate, parse_config
from stackwise.errors import SpecError

gensim = pytest.importorskip("gensim")
DATA = Path(gensim.__file__).parent / "test" / "test_data"
ITALIAN = Path("/usr/share/gnupg/help.it.txt")


def lee() -> list[str]:
    text = (DATA / "lee_background.cor").read_text(encoding="latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


def italian_paragraphs() -> list[str]:
    if not ITALIAN.exists():
        pytest.skip("GnuPG's Italian help text is not installed")
    blocks = re.split(r"\n\.\n|\n\.[a-z_.]+\n", ITALIAN.read_text(encoding="utf-8"))
    paras = [" ".join(b.split()) for b in blocks if not b.lstrip().startswith("#")]
    return [p for p in paras if len(p) > 150]


def bulgarian_paragraphs() -> list[str]:
    text = bz2.open(DATA / "bgwiki-latest-pages-articles-shortened.xml.bz2").read().decode("utf-16")
    out = []
    for line in text.splitlines():
        if len(line) < 300 or line.lstrip().startswith(("<", "{", "|", "*", "=", "[[")):
            continue
        line = re.sub(r"&lt;ref.*?(&lt;/ref&gt;|/&gt;)", "", line)
        line = re.sub(r"\{\{.*?\}\}|'''?|\[\[(?:[^|\]]*\|)?|\]\]", "", line)
        if len(line) > 300:
            out.append(line)
    return out


def luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        d = d * 2 if i % 2 == 0 else d
        total += d - 9 if d > 9 else d
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    return f"{s[:4]} {s[4:8]} {s[8:12]} {s[12:]}"


def iban(rng: random.Random) -> str:
    bban = "".join(str(rng.randrange(10)) for _ in range(18))  # German: 8-digit bank code + 10-digit account
    check = 98 - int(bban + "131400") % 97  # D=13, E=14, "00"
    return f"DE{check:02d}{bban}"


def plant_pii(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """(entity, value) pairs: valid cards and IBANs by construction, and emails, phones, IPs, SSNs."""
    out = []
    for i in range(n):
        out += [("CREDIT_CARD", luhn_card(rng)), ("IBAN_CODE", iban(rng)),
                ("EMAIL_ADDRESS", f"person{i}.name@example{i}.com"),
                ("PHONE_NUMBER", f"(415) 555-{1000 + i * 37:04d}"),
                ("IP_ADDRESS", f"10.{i}.{rng.randrange(256)}.{rng.randrange(1, 255)}"),
                ("US_SSN", f"{rng.randrange(100, 599)}-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}")]
    return out


def edit(text: str, rng: random.Random) -> str:
    """An edited copy: two words replaced and one deleted."""
    words = text.split()
    for _ in range(2):
        words[rng.randrange(len(words))] = rng.choice(["indeed", "however", "reportedly", "meanwhile"])
    del words[rng.randrange(len(words))]
    return " ".join(words)


def shingle_set(text: str, n: int = 5) -> set[str]:
    words = re.findall(r"\w+", " ".join(text.lower().split()))
    return {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: str, b: str) -> float:
    x, y = shingle_set(a), shingle_set(b)
    return len(x & y) / len(x | y)


def rate(hits: int, total: int) -> float:
    return hits / total if total else 1.0


@pytest.fixture(scope="module")
def corpus() -> dict:
    rng = random.Random(7)
    articles = lee()
    items = [Item(f"lee-{i}", [a]) for i, a in enumerate(articles)]
    exact = {}
    for j, i in enumerate(rng.sample(range(len(articles)), 15)):
        items.append(Item(f"dup-{j}", ["  " + articles[i].upper() + "\n"]))  # case and spacing differ
        exact[f"dup-{j}"] = f"lee-{i}"
    near = {}
    long_ones = [i for i, a in enumerate(articles) if len(a.split()) > 150]
    for j, i in enumerate(rng.sample(long_ones, 20)):
        items.append(Item(f"near-{j}", [edit(articles[i], rng)]))
        near[f"near-{j}"] = f"lee-{i}"
    foreign = {}
    for j, p in enumerate(italian_paragraphs()[:8] + bulgarian_paragraphs()[:8]):
        items.append(Item(f"foreign-{j}", [p]))
        foreign[f"foreign-{j}"] = "it" if j < 8 else "bg"
    return {"items": items, "articles": articles, "exact": exact, "near": near, "foreign": foreign}


def test_duplicates_and_languages_recall_and_precision(corpus: dict) -> None:
    config = parse_config({"quality": {"enabled": False}, "pii": {"enabled": False}}, "test")
    result = curate(corpus["items"], config)
    text = {i.id: i.text for i in corpus["items"]}
    dropped = {e.id: e for e in result.excluded}
    # Exact: the planted copies, and any copy the Lee corpus itself holds (it has a few).
    seen: dict[str, str] = {}
    truth_exact = set()
    for item in corpus["items"]:
        key = " ".join(item.text.lower().split())
        if key in seen:
            truth_exact.add(item.id)
        seen.setdefault(key, item.id)
    got_exact = {i for i, e in dropped.items() if e.reason == "exact_duplicate"}
    assert set(corpus["exact"]) <= truth_exact
    exact_recall, exact_precision = rate(len(got_exact & truth_exact), len(truth_exact)), \
        rate(len(got_exact & truth_exact), len(got_exact))
    # Near: every planted copy is truly near (exact Jaccard); a drop is right when its exact Jaccard with
    # the kept document it matched is at least the threshold less MinHash's estimation error (0.1).
    for copy, original in corpus["near"].items():
        assert jaccard(text[copy], text[original]) >= 0.8, copy
    got_near = {i: e for i, e in dropped.items() if e.reason == "near_duplicate"}
    planted_found = [c for c in corpus["near"] if c in got_near]
    right = [i for i, e in got_near.items() if jaccard(text[i], text[e.detail.rsplit(" ", 1)[-1]]) >= 0.7]
    near_recall, near_precision = rate(len(planted_found), len(corpus["near"])), rate(len(right), len(got_near))
    got_lang = {i for i, e in dropped.items() if e.reason == "language"}
    lang_recall = rate(len(got_lang & set(corpus["foreign"])), len(corpus["foreign"]))
    lang_precision = rate(len(got_lang & set(corpus["foreign"])), len(got_lang))
    print(f"\nexact dup: recall {exact_recall:.3f} precision {exact_precision:.3f} ({len(truth_exact)} true)"
          f"\nnear dup:  recall {near_recall:.3f} precision {near_precision:.3f} ({len(got_near)} dropped)"
          f"\nlanguage:  recall {lang_recall:.3f} precision {lang_precision:.3f} ({len(corpus['foreign'])} planted)")
    assert exact_recall == 1.0 and exact_precision == 1.0
    assert near_recall >= 0.9 and near_precision >= 0.9
    assert lang_recall >= 0.9 and lang_precision >= 0.9
    assert result.report.languages["it"] + result.report.languages["bg"] >= 15
    # Each near-dup cluster names the kept original of the planted copy.
    clusters = {d: c.kept for c in result.report.near_duplicate_clusters for d in c.duplicates}
    assert all(clusters[c] == corpus["near"][c] for c in planted_found)


def test_nothing_planted_survives_redaction_and_reports_hold_no_values(corpus: dict) -> None:
    rng = random.Random(11)
    planted = plant_pii(rng, 5)
    articles = corpus["articles"][:60]
    items, expected = [], {}
    for i, (entity, value) in enumerate(planted):
        a = articles[i]
        items.append(Item(f"pii-{i}", [f"{a[:200]} You can reach the office at {value} today. {a[200:]}"]))
        expected[f"pii-{i}"] = entity
    items += [Item(f"clean-{i}", [a]) for i, a in enumerate(articles[len(planted):], len(planted))]
    config = parse_config({"quality": {"enabled": False}, "dedup": {"near": False}, "language": {"enabled": False}},
                          "test")
    result = curate(items, config)
    out = "\n".join(i.text for i in result.kept)
    report_json = result.report.model_dump_json()
    survived = [v for _, v in planted if v in out or v.replace(" ", "") in out.replace(" ", "")]
    assert not survived, f"{len(survived)} planted values survived redaction"
    assert not [v for _, v in planted if v in report_json]
    per_entity = {}
    for entity in sorted(set(expected.values())):
        n = sum(1 for e in expected.values() if e == entity)
        per_entity[entity] = (result.report.redacted.get(entity, 0), n)
    found_total = sum(result.report.redacted.values())
    placeholders = sum(out.count(p) for p in ("<EMAIL>", "<PHONE>", "<CREDIT_CARD>", "<IBAN>", "<IP_ADDRESS>",
                                                 "<US_SSN>"))
    # Precision: redactions in documents nothing was planted in are false positives.
    clean_hits = sum(sum(i.text.count(p) for p in ("<EMAIL>", "<PHONE>", "<CREDIT_CARD>", "<IBAN>", "<IP_ADDRESS>",
                                                    "<US_SSN>")) for i in result.kept if i.id.startswith("clean"))
    precision = rate(found_total - clean_hits, found_total)
    print("\nPII redacted / planted per type:", per_entity, f"precision {precision:.3f} ({clean_hits} false)")
    assert placeholders == found_total
    for entity, (got, n) in per_entity.items():
        assert got >= n, entity
    assert precision >= 0.9


def test_pii_checksums_and_drop_mode() -> None:
    from stackwise.curation.pii import PiiScanner

    scanner = PiiScanner(["CREDIT_CARD", "IBAN_CODE"], 0.4)
    good = "card 4111 1111 1111 1111 and iban GB82 WEST 1234 5698 7654 32"
    bad = "card 4111 1111 1111 1112 and iban GB83 WEST 1234 5698 7654 32"  # Luhn and mod-97 both broken
    assert sorted(f.entity for f in scanner.scan(good)) == ["CREDIT_CARD", "IBAN_CODE"]
    assert scanner.scan(bad) == []
    config = parse_config({"quality": {"enabled": False}, "language": {"enabled": False},
                           "pii": {"mode": "drop"}}, "test")
    result = curate([Item("a", [lee()[0] + " mail me: someone@example.org"]), Item("b", [lee()[1]])], config)
    assert [e.id for e in result.excluded] == ["a"] and result.excluded[0].reason == "pii"
    assert "someone@example.org" not in result.excluded[0].text  # exclusions hold redacted text


def test_paragraph_filter_removes_other_language_paragraphs(corpus: dict) -> None:
    it, bg = italian_paragraphs()[0], bulgarian_paragraphs()[0][:400]
    article, second, third = corpus["articles"][3:6]
    config = parse_config({"quality": {"enabled": False}, "pii": {"enabled": False},
                           "language": {"paragraphs": True}}, "test")
    result = curate([Item("mixed", [f"{article}\n\n{it}\n\n{second}\n\n{bg}\n\n{third}"])], config)
    kept = result.kept[0].text
    assert kept == f"{article}\n\n{second}\n\n{third}"
    assert result.report.paragraphs_removed == {"it": 1, "bg": 1}
    tag = parse_config({"quality": {"enabled": False}, "pii": {"enabled": False},
                        "language": {"mode": "tag", "paragraphs": True}}, "test")
    tagged = curate([Item("mixed", [f"{article}\n\n{it}"]), Item("it", [it])], tag).kept
    assert tagged[0].metadata == {"language": "en", "paragraph_languages": ["en", "it"]}
    assert tagged[1].metadata["language"] == "it"


def test_quality_rules_against_hand_counts() -> None:
    from stackwise.curation.config import QualityConfig, RepetitionConfig
    from stackwise.curation.quality import (dup_ngram_char_fraction, quality_failure, remove_boilerplate_lines,
                                            repetition_failure, top_ngram_char_fraction)

    words = "a b a b c".split()
    assert top_ngram_char_fraction(words, 2) == pytest.approx(4 / 5)  # "a b" twice: 4 of 5 characters
    assert dup_ngram_char_fraction("x y z q x y z".split(), 3) == pytest.approx(6 / 7)
    article = lee()[0]
    assert quality_failure(article, QualityConfig()) is None
    assert quality_failure("lorem ipsum " + article, QualityConfig())[0] == "c4.lorem_ipsum"
    assert quality_failure(" ".join(article.split()[:30]), QualityConfig())[0] == "quality.min_words"
    assert quality_failure("\n".join(f"- item {w}" for w in article.split()), QualityConfig())[0] == \
        "quality.bullet_lines"
    assert quality_failure("# " * 40 + article, QualityConfig())[0] == "quality.symbol_word_ratio"
    assert quality_failure(" ".join(["1234 5678"] * 60) + " the and", QualityConfig())[0] == "quality.alpha_words"
    lines = article.split(". ")
    assert repetition_failure("\n".join(lines + lines[:len(lines) // 2 + 1]), RepetitionConfig())[0] == \
        "repetition.dup_line_fraction"
    cleaned, removed = remove_boilerplate_lines("Real text.\nPlease enable JavaScript.\nRead our Cookie Policy.\nEnd.")
    assert (cleaned, removed) == ("Real text.\nEnd.", 2)


def test_python_docs_curate_without_error() -> None:
    from pydoc_data.topics import topics

    items = [Item(k, [v]) for k, v in sorted(topics.items())]
    result = curate(items, parse_config({"pii": {"enabled": False}}, "test"))
    print(f"\npydoc topics: {result.report.documents} in, kept {result.report.kept}, "
          f"dropped {result.report.dropped_by_reason}")
    assert result.report.kept + result.report.dropped == len(items)
    assert result.report.languages.get("en", 0) >= 0.9 * len(items) - result.report.dropped


@pytest.mark.parametrize("raw, key, words", [
    ({"dedup": {"threshold": 1.5}}, "dedup.threshold", "0.5 to 1.0"),
    ({"dedup": {"num_perm": 4}}, "dedup.num_perm", "16 to 512"),
    ({"quality": {"min_wrods": 3}}, "quality.min_wrods", "unknown key"),
    ({"pii": {"mode": "shred"}}, "pii.mode", "report"),
    ({"pii": {"entities": ["PASSWORD"]}}, "pii.entities", "EMAIL_ADDRESS"),
    ({"language": {"languages": ["English"]}}, "language.languages", "ISO 639-1"),
    ({"quality": {"repetition": {"dup_ngram_char_fraction": {3: 0.1}}}}, "quality.repetition.dup_ngram_char_fraction", "between 5 and 10"),
    ({"colour": 1}, "colour", "unknown key"),
])
def test_bad_config_names_key_and_range(raw: dict, key: str, words: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_config(raw, "curate.yaml")
    message = str(err.value)
    assert key in message and words in message and "curate.yaml" in message and "fix:" in message


def test_state_across_runs_drops_new_near_duplicate_not_a_new_version(tmp_path: Path, corpus: dict) -> None:
    rng = random.Random(5)
    articles = [a for a in corpus["articles"] if len(a.split()) > 150][:30]
    config = parse_config({"quality": {"enabled": False}, "pii": {"enabled": False}}, "test")
    first = curate([Item(f"a{i}", [a]) for i, a in enumerate(articles)], config, state_folder=str(tmp_path))
    assert first.report.kept == 30 and (tmp_path / "dedup-state.npz").exists()
    second = curate([Item("a0", [edit(articles[0], rng)]),  # a new version of a0: not its own duplicate
                     Item("new-copy", [edit(articles[1], rng)]),  # a new document near a1, indexed earlier
                     Item("new-exact", [articles[2]])], config, state_folder=str(tmp_path))
    assert second.report.state_documents == 30
    assert {e.id: e.reason for e in second.excluded} == {"new-copy": "near_duplicate", "new-exact": "exact_duplicate"}
    other = parse_config({"dedup": {"num_perm": 64}, "quality": {"enabled": False}, "pii": {"enabled": False}}, "t")
    third = curate([Item("x", [articles[3]])], other, state_folder=str(tmp_path / "elsewhere"))
    assert third.report.state_documents == 0


def test_specs_without_curation_keep_their_digest() -> None:
    from stackwise.specs import FineTuneSpec, IndexSpec

    # Digests computed by the specs module before the curation field existed (git HEAD 92e6308).
    assert IndexSpec(source="docs", index="kb").digest() == "235aee001aab3972"
    assert FineTuneSpec(base="smollm2-135m-instruct", data="/tmp/t.jsonl").digest() == "46ae6856fce536b7"
    curated = IndexSpec(source="docs", index="kb", curation=CurationConfig())
    assert curated.digest() != "235aee001aab3972"
    assert IndexSpec.model_validate_json(curated.model_dump_json()) == curated


def test_finetune_records_curated_keep_format(tmp_path: Path) -> None:
    import json

    from stackwise.training.data import read_dataset, write_curation

    arts = lee()[:6]
    rows = [{"prompt": f"Summarise: {a}", "completion": a[:200]} for a in arts]
    rows.append(dict(rows[0]))  # an exact duplicate record
    rows.append({"prompt": "Call me at (415) 555-0134 please. " + arts[5], "completion": arts[4][:200]})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = parse_config({"quality": {"enabled": False}}, "test")
    data = read_dataset(str(path), config)
    assert data.format == "prompt_completion" and len(data.records) == 7 and data.lines == [1, 2, 3, 4, 5, 6, 8]
    assert data.records[-1]["prompt"].startswith("Call me at <PHONE> please.")
    assert data.curation["dropped_by_reason"] == {"exact_duplicate": 1}
    uris = write_curation(data, str(tmp_path / "out"))
    assert json.loads(Path(uris["exclusions"]).read_text())["id"].endswith("#7")
