"""Classify one inbound SMS body as opt-out, wrong number, opt-in, confirm, help, join or other.

Pure Python: the keyword packs in ``config/keywords/*.toml`` are data, compiled once by
``KeywordEngine.from_directory``. Matching has two layers:

* whole-message keywords ("STOP", "Arrêt!!", "stooop"), compared after ``normalise`` and
  repeat-folding, the way carriers and Twilio treat a bare keyword;
* free-text revocations ("please stop texting me", "who is this? stop"), because the FCC's 2024
  order (FCC 24-24) makes any reply that a reasonable person reads as a revocation binding;
* wrong-number replies ("wrong number", "new number who dis", "打错了"): the person holding the
  number is not the one who agreed, so every consent on the number is void (Intent.WRONG_NUMBER);
* ambiguous replies, whole messages only ("no thanks", "not interested", "nein danke"): they may
  revoke or may answer a question, so they are a class of their own (Intent.AMBIGUOUS) and each
  program decides (``ambiguous_replies``); inside a longer text they are ordinary words.

Scripts without spaces between words (Chinese, Japanese) are matched by packs that set
``free_text.word_boundaries = false``: their phrases match anywhere in a sentence.

Missing a revocation is a legal violation, while a false one costs a subscriber who is told how to
reply START, so every rule leans towards opt-out when a short reply is directed at the sender.
"""

from __future__ import annotations

import enum
import functools
import re
import tomllib
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

__all__ = ["Classification", "Intent", "KeywordEngine", "KeywordPack", "default_engine", "normalise"]


class Intent(enum.StrEnum):
    """What an inbound message asks for."""

    OPT_OUT = "opt_out"
    OPT_OUT_ALL = "opt_out_all"
    WRONG_NUMBER = "wrong_number"  # "wrong number": not the person who agreed; ends every consent
    # A whole reply that may be a revocation or may answer a question ("no thanks", "not interested"):
    # each program says what it does (ambiguous_replies: opt out, the default, or keep and list for review).
    AMBIGUOUS = "ambiguous"
    OPT_IN = "opt_in"
    CONFIRM = "confirm"
    HELP = "help"
    JOIN = "join"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Classification:
    """The intent of one message, with the keyword, pack language and join program that matched."""

    intent: Intent
    keyword: str | None = None
    language: str | None = None
    program: str | None = None

    @property
    def is_opt_out(self) -> bool:
        """True for OPT_OUT, OPT_OUT_ALL and WRONG_NUMBER (each ends consent)."""
        return self.intent in _OPT_OUTS


_OPT_OUTS = frozenset({Intent.OPT_OUT, Intent.OPT_OUT_ALL, Intent.WRONG_NUMBER})
_OTHER = Classification(Intent.OTHER)
_NO_JOIN_KEYWORDS: Mapping[str, str] = MappingProxyType({})


# --------------------------------------------------------------------------------------------------
# Folding

# A sentence boundary survives folding as a newline, so one pass yields both the flat text and its
# sentences. Everything else that is not a letter or digit becomes a space.
_BOUNDARY = "\n"
# Dropped outright so that "don't", "don’t" and "dont" fold alike (and "m'envoyer" to "MENVOYER").
_APOSTROPHES = frozenset("'`\u00b4\u2018\u2019\u201b\u02bc\u2032\uff07")
_ASCII_BOUNDARIES = frozenset(".!?;:,\n\r")
_MAX_CACHED_CHARS = 20_000
# Latin letters with a stroke do not decompose, yet people type them without it ("wysylaj", "dung").
_STROKES = {"Ł": "L", "Đ": "D", "Ø": "O", "Ħ": "H", "Ŧ": "T", "Ƀ": "B", "Ɨ": "I"}
# Scripts whose marks are letters, not accents: a Devanagari vowel sign, a kana voicing mark, a Hangul
# syllable's parts. These keep their marks (NFKC: compatibility forms still fold) and have no case.
_KEEP_MARKS = ((0x0900, 0x0DFF), (0x1100, 0x11FF), (0x3040, 0x30FF), (0x3130, 0x318F), (0xA960, 0xA97F),
               (0xAC00, 0xD7AF), (0xD7B0, 0xD7FF), (0xFF65, 0xFF9F))
_TATWEEL = "\u0640"  # Arabic elongation ("توقفــــ"): drawing, not a letter


def _fold_code_point(code_point: int) -> str:
    """Fold one character: upper-case letters and digits without marks, a space, a boundary or ''."""
    char = chr(code_point)
    if char in _APOSTROPHES:
        return ""
    if char.isascii():
        if char.isalnum():
            return char.upper()
        return _BOUNDARY if char in _ASCII_BOUNDARIES else " "
    if char == _TATWEEL:
        return ""
    if any(low <= code_point <= high for low, high in _KEEP_MARKS):
        return "".join(
            part if unicodedata.category(part)[0] in "LNM" else _fold_plain(part)
            for part in unicodedata.normalize("NFKC", char)
        )
    # Case-fold before dropping marks (U+0345 upper-cases to a letter), decompose around it so that
    # compatibility forms ("Ｓｔｏｐ", "ﬁn") and accents come apart, then upper-case.
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", char).casefold())
    decomposed = unicodedata.normalize("NFKD", decomposed.upper())
    return "".join(map(_fold_plain, decomposed))


def _fold_plain(char: str) -> str:
    """Fold one already decomposed, upper-cased character."""
    if char in _APOSTROPHES:
        return ""
    if char.isascii():
        return _ASCII_FOLD[ord(char)]
    if char in _STROKES:
        return _STROKES[char]
    category = unicodedata.category(char)
    if category[0] == "M" or category == "Cf":
        return ""  # accents, variation selectors, zero-width joiners and direction marks
    if category[0] in "LN":
        return char
    # Emoji and other pictographs end a sentence ("who is this 🤨 stop"), like ¿ ¡ … 。 and ؟ do.
    if category in ("So", "Po", "Zl", "Zp") or char == "\x85":
        return _BOUNDARY
    return " "


_ASCII_FOLD = tuple(_fold_code_point(code_point) for code_point in range(128))


class _FoldTable(dict[int, str]):
    """A ``str.translate`` table that computes and remembers each character's folding on first use."""

    def __missing__(self, code_point: int) -> str:
        folded = _fold_code_point(code_point)
        if len(self) < _MAX_CACHED_CHARS:  # bounded: hostile input can name a million code points
            self[code_point] = folded
        return folded


_FOLD_TABLE = _FoldTable(enumerate(_ASCII_FOLD))
# Letters, and the marks that folded text keeps (Devanagari vowel signs: "रोकोो"), the only other
# characters left in it besides digits and spaces.
_REPEATS = re.compile(r"([^\W\d_]|[^\w\s])\1+")
_ASCII_REPEATS = re.compile(r"([A-Z])\1+")  # same on ASCII text, and several times faster


_KANA_VOICING = ("\u3099", "\u309a")  # what half-width "ﾞ" and "ﾟ" fold to: they combine with the kana before


def _fold(text: str) -> str:
    """Upper-case, strip accents and apostrophes; punctuation to spaces, sentence ends to newlines."""
    folded = text.translate(_FOLD_TABLE)
    if _KANA_VOICING[0] in folded or _KANA_VOICING[1] in folded:
        folded = unicodedata.normalize("NFC", folded)  # "ｽﾄｯﾌﾟ" -> "ストップ", as the packs write it
    return folded


def _words(folded: str) -> str:
    """Join the words of folded text with single spaces."""
    return " ".join(folded.split())


def _squeeze(text: str) -> str:
    """Collapse runs of one letter ("STOOOPP" -> "STOP"); applied to both the text and the keywords."""
    return (_ASCII_REPEATS if text.isascii() else _REPEATS).sub(r"\1", text)


def normalise(text: str) -> str:
    """Fold text for matching: upper case, no accents, apostrophes or punctuation, single spaces."""
    return _words(_fold(text))


# --------------------------------------------------------------------------------------------------
# Keyword packs

_KEYWORD_INTENTS = {
    "opt_out": Intent.OPT_OUT,
    "opt_out_all": Intent.OPT_OUT_ALL,
    "wrong_number": Intent.WRONG_NUMBER,
    "ambiguous": Intent.AMBIGUOUS,
    "opt_in": Intent.OPT_IN,
    "confirm": Intent.CONFIRM,
    "help": Intent.HELP,
}
_KEYWORD_KEYS = frozenset(_KEYWORD_INTENTS) | {"not_keywords", "opt_out_symbols"}
_FREE_TEXT_LISTS = ("commands", "before", "after", "trailing", "not_before_trailing", "phrases", "wrong_number",
                    "negations")
_FREE_TEXT_KEYS = frozenset(_FREE_TEXT_LISTS) | {"negation_window", "word_boundaries"}
# Emoji modifiers and joiners that may follow an opt-out symbol: "✋🏽", "🛑\ufe0f".
_SYMBOL_DECORATIONS = frozenset("\ufe0e\ufe0f\u200d") | {chr(c) for c in range(0x1F3FB, 0x1F400)}
_ESCAPES = re.compile(r"\\.")
_LETTER_RUNS = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class KeywordPack:
    """One language's keywords and free-text rules, as read from a TOML file."""

    language: str
    source: str
    keywords: Mapping[Intent, tuple[str, ...]] = field(default_factory=dict)
    not_keywords: tuple[str, ...] = ()
    opt_out_symbols: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    trailing: tuple[str, ...] = ()
    not_before_trailing: tuple[str, ...] = ()
    phrases: tuple[str, ...] = ()
    wrong_number: tuple[str, ...] = ()
    negations: tuple[str, ...] = ()
    negation_window: int = 2
    word_boundaries: bool = True

    @classmethod
    def from_file(cls, path: str | Path) -> KeywordPack:
        """Read and validate one pack; raise ValueError naming the file and key on bad data."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ValueError(f"{path}: cannot read keyword pack ({error})") from None
        return cls.from_mapping(data, source=str(path))

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], source: str = "<pack>") -> KeywordPack:
        """Validate parsed TOML; raise ValueError naming the source and key on bad data."""

        def fail(key: str, problem: str) -> ValueError:
            return ValueError(f"{source}: {key}: {problem}")

        def table(key: str, allowed: frozenset[str]) -> Mapping[str, object]:
            value = data.get(key, {})
            if not isinstance(value, Mapping):
                raise fail(key, "must be a table")
            unknown = sorted(set(value) - allowed)
            if unknown:
                raise fail(f"{key}.{unknown[0]}", f"unknown key (expected one of {', '.join(sorted(allowed))})")
            return value

        def words(key: str, value: object) -> tuple[str, ...]:
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise fail(key, "must be a list of strings")
            for item in value:
                if not normalise(item):
                    raise fail(key, f"{item!r} has no letters or digits")
            return tuple(value)

        unknown = sorted(set(data) - {"language", "keywords", "free_text"})
        if unknown:
            raise fail(unknown[0], "unknown key (expected language, keywords, free_text)")
        language = data.get("language")
        if not isinstance(language, str) or not language.strip():
            raise fail("language", "must be a non-empty string, e.g. \"en\"")
        keywords_table = table("keywords", _KEYWORD_KEYS)
        free_text = table("free_text", _FREE_TEXT_KEYS)
        lists = {name: words(f"free_text.{name}", free_text.get(name, [])) for name in _FREE_TEXT_LISTS}
        # These are compared word by word.
        for name in ("before", "after", "trailing", "not_before_trailing"):
            for item in lists[name]:
                if " " in normalise(item):
                    raise fail(f"free_text.{name}", f"{item!r} must be a single word")
        for name in ("phrases", "wrong_number", "negations"):
            for pattern in lists[name]:
                _check_pattern(pattern, lambda problem, name=name: fail(f"free_text.{name}", problem))
        window = free_text.get("negation_window", 2)
        if not isinstance(window, int) or isinstance(window, bool) or not 0 <= window <= 5:
            raise fail("free_text.negation_window", "must be an integer from 0 to 5")
        word_boundaries = free_text.get("word_boundaries", True)
        if not isinstance(word_boundaries, bool):
            raise fail("free_text.word_boundaries", "must be true or false")
        symbols = keywords_table.get("opt_out_symbols", [])
        if not isinstance(symbols, list) or not all(
            isinstance(symbol, str) and len(symbol) == 1 and unicodedata.category(symbol) == "So" for symbol in symbols
        ):
            raise fail("keywords.opt_out_symbols", "must be a list of single symbol characters, e.g. [\"🛑\"]")
        if symbols and not keywords_table.get("opt_out"):
            raise fail("keywords.opt_out_symbols", "needs an opt_out keyword to stand for")
        return cls(
            language=language.strip(),
            source=source,
            keywords={
                intent: words(f"keywords.{key}", keywords_table.get(key, []))
                for key, intent in _KEYWORD_INTENTS.items()
            },
            not_keywords=words("keywords.not_keywords", keywords_table.get("not_keywords", [])),
            opt_out_symbols=tuple(symbols),
            negation_window=window,
            word_boundaries=word_boundaries,
            **lists,
        )


def _check_pattern(pattern: str, fail: Callable[[str], ValueError]) -> None:
    """Reject a phrase that does not compile or is not written in normalised form."""
    try:
        re.compile(pattern)
    except re.error as error:
        raise fail(f"{pattern!r} is not a valid regular expression ({error})") from None
    # Patterns run on normalised text, so "Arrêtez" or "don't" in a pattern could never match.
    for run in _LETTER_RUNS.findall(_ESCAPES.sub(" ", pattern)):
        if normalise(run) != run:
            raise fail(f"{pattern!r}: write {run!r} as {normalise(run)!r} (patterns match normalised text)")
    if "'" in pattern:
        raise fail(f"{pattern!r}: apostrophes are removed from text before matching")


# --------------------------------------------------------------------------------------------------
# The engine


# Free-text rules run on a sentence padded with one space at each end: every pattern then starts with a
# literal space, which lets the regex engine skip straight to word starts, and offsets line up so that
# ``padded[:start]`` is exactly the words before the one at ``start``.


@dataclass(frozen=True, slots=True)
class _Grammar:
    """Per-language negations that cancel a free-text match."""

    negation: re.Pattern[str] | None
    lookback: int  # words before a match that a negation can reach: the window plus its own length

    def negated(self, padded: str, start: int) -> bool:
        """Whether a negation ends within the window before the word after ``padded[start]``."""
        if self.negation is None:
            return False
        # Search only the last few words, so a long message full of negated phrases stays linear.
        begin = start
        for _ in range(self.lookback):
            begin = padded.rfind(" ", 0, begin)
            if begin <= 0:
                begin = 0
                break
        return self.negation.search(padded, begin, start) is not None


@dataclass(frozen=True, slots=True)
class _Phrase:
    """A compiled revocation phrase and the pack it came from."""

    pattern: re.Pattern[str]
    result: Classification
    grammar: _Grammar
    source: str  # as written in the pack, repeats squeezed
    bounded: bool  # whole words only (``word_boundaries``): the pattern starts with a space


class KeywordEngine:
    """Compiled keyword packs; ``classify`` maps one message body to a Classification."""

    def __init__(self, packs: Sequence[KeywordPack]) -> None:
        if not packs:
            raise ValueError("no keyword packs given")
        self._packs = tuple(packs)
        # Everything is keyed by squeezed, normalised words. When packs share a keyword ("STOP" is
        # English and French) the first pack in load order names its language.
        self._keywords: dict[str, Classification] = {}
        self._keyword_origins: dict[str, str] = {}
        self._not_keywords: set[str] = set()  # normalised, not squeezed: "STOOOP" must still match
        # first word of a command -> (all its words, result, grammar), longest first
        self._commands: dict[str, list[tuple[tuple[str, ...], Classification, _Grammar]]] = {}
        self._before: set[str] = set()
        self._after: set[str] = set()
        self._blockers: set[str] = set()
        self._trailing: dict[str, tuple[Classification, _Grammar]] = {}
        self._phrases: list[_Phrase] = []
        self._wrong_number: list[_Phrase] = []
        # An opt-out symbol ("🛑", "✋") reads as its pack's first opt-out keyword, as a word of its own:
        # alone it is that keyword, and "✋ wait, I have a question" stays a question.
        self._symbols: dict[int, str] = {}
        for pack in packs:
            self._compile(pack)

        # "stop STOP stop": opt-out words may follow a command like any other word about the texts.
        self._after.update(words[0] for entries in self._commands.values() for words, *_ in entries if len(words) == 1)
        for entries in self._commands.values():
            entries.sort(key=lambda entry: -len(entry[0]))
        # One combined search rejects most sentences before the phrases are tried one by one.
        self._any_phrase = _Combined(self._phrases)
        self._any_wrong_number = _Combined(self._wrong_number)

    def _compile(self, pack: KeywordPack) -> None:
        """Add one pack's keywords and free-text rules to the lookup tables."""
        grammar = _Grammar(
            _negation_regex(pack.negations, pack.negation_window),
            lookback=pack.negation_window + max((negation.count(" ") + 1 for negation in pack.negations), default=0),
        )
        free_text = {intent: Classification(intent, None, pack.language) for intent in _OPT_OUTS}
        for key, intent in _KEYWORD_INTENTS.items():
            for word in pack.keywords.get(intent, ()):
                canonical = normalise(word)
                squeezed = _squeeze(canonical)
                origin = f"{pack.source}: keywords.{key} {word!r}"
                existing = self._keywords.setdefault(squeezed, Classification(intent, canonical, pack.language))
                self._keyword_origins.setdefault(squeezed, origin)
                if existing.intent is not intent:
                    raise ValueError(f"{origin} folds to the same text as {self._keyword_origins[squeezed]}")
                if intent in _OPT_OUTS:
                    self._add_command(squeezed, free_text[intent], grammar)
        for command in pack.commands:
            self._add_command(_squeeze(normalise(command)), free_text[Intent.OPT_OUT], grammar)
        self._not_keywords.update(normalise(word) for word in pack.not_keywords)
        self._before.update(_squeeze(normalise(word)) for word in pack.before)
        self._after.update(_squeeze(normalise(word)) for word in pack.after)
        self._blockers.update(_squeeze(normalise(word)) for word in pack.not_before_trailing)
        for word in pack.trailing:
            self._trailing.setdefault(_squeeze(normalise(word)), (free_text[Intent.OPT_OUT], grammar))
        # Without word boundaries (Chinese, Japanese) a phrase matches anywhere in the sentence.
        edges = (" (?:", ")(?= )") if pack.word_boundaries else ("(?:", ")")
        for sources, intent, phrases in ((pack.phrases, Intent.OPT_OUT, self._phrases),
                                         (pack.wrong_number, Intent.WRONG_NUMBER, self._wrong_number)):
            for source in sources:
                squeezed = _squeeze(source)
                pattern = re.compile(edges[0] + squeezed + edges[1])
                phrases.append(_Phrase(pattern, free_text[intent], grammar, squeezed, pack.word_boundaries))
        if pack.opt_out_symbols:
            stands_for = f" {pack.keywords[Intent.OPT_OUT][0]} "
            for symbol in pack.opt_out_symbols:
                self._symbols.setdefault(ord(symbol), stands_for)

    def _add_command(self, squeezed: str, result: Classification, grammar: _Grammar) -> None:
        words = tuple(squeezed.split(" "))
        entries = self._commands.setdefault(words[0], [])
        if all(existing != words for existing, *_ in entries):
            entries.append((words, result, grammar))

    @classmethod
    def from_directory(cls, path: str | Path) -> KeywordEngine:
        """Load every ``*.toml`` pack in ``path`` (in file-name order); raise ValueError on bad data."""
        directory = Path(path)
        files = sorted(directory.glob("*.toml"))
        if not files:
            raise ValueError(f"{directory}: no *.toml keyword packs found")
        return cls([KeywordPack.from_file(file) for file in files])

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages of the loaded packs, in load order."""
        return tuple(pack.language for pack in self._packs)

    def classify(self, text: str, join_keywords: Mapping[str, str] = _NO_JOIN_KEYWORDS) -> Classification:
        """Classify one inbound message; ``join_keywords`` maps a program's keyword to its slug."""
        if not isinstance(text, str):
            return _OTHER
        result = self._classify(text, join_keywords)
        if result.intent is Intent.OTHER and self._symbols:
            # Read an opt-out symbol as its keyword only when the text means nothing with it as an emoji:
            # "STOP 🛑" keeps its keyword, "🛑" and "🛑 please" opt out, "✋ wait, a question" does not.
            with_words = text.translate(self._symbols)
            if with_words != text:
                return self._classify(with_words, join_keywords)
        return result

    def _classify(self, text: str, join_keywords: Mapping[str, str]) -> Classification:
        folded = _fold(text)
        whole = _words(folded)
        if not whole:
            return _OTHER
        # Squeezing never crosses a space or a sentence boundary, so one pass serves every sentence.
        folded_squeezed = _squeeze(folded)
        squeezed = _words(folded_squeezed)
        hit = self._keyword(whole, squeezed) or self._spelled_out(whole)
        if hit is not None:
            return hit
        if join_keywords:
            joined = _join(whole, squeezed, join_keywords)
            if joined is not None:
                return joined
        return self._revocation(folded, folded_squeezed) or _OTHER

    def _keyword(self, words: str, squeezed: str) -> Classification | None:
        if words in self._not_keywords:
            return None
        return self._keywords.get(squeezed)

    def _spelled_out(self, words: str) -> Classification | None:
        """A keyword typed letter by letter ("S T O P", "s.t.o.p", "S-T-O-P") or said again and again
        ("stop stop stop", "🛑 Stop 🛑")."""
        tokens = words.split(" ")
        if len(tokens) < 2:
            return None
        if len(set(tokens)) == 1:
            return self._keyword(tokens[0], _squeeze(tokens[0]))
        if len(tokens) < 3 or any(len(letter) != 1 for letter in tokens):
            return None
        return self._keyword("".join(tokens), _squeeze("".join(tokens)))

    def _revocation(self, folded: str, folded_squeezed: str) -> Classification | None:
        """Find a wrong-number reply in any sentence of the message, else a free-text opt-out."""
        # A wrong number anywhere outweighs an opt-out elsewhere: it ends more ("Wrong number. Stop.").
        # Read across sentences: "New number, who dis?" is one thought.
        if self._wrong_number:
            padded = f" {_words(folded_squeezed)} "
            if self._any_wrong_number.search(padded):
                hit = _first_unnegated(self._wrong_number, padded)
                if hit is not None:
                    return hit
        for sentence, sentence_squeezed in zip(folded.split(_BOUNDARY), folded_squeezed.split(_BOUNDARY)):
            words = _words(sentence)
            if not words:
                continue
            squeezed = _words(sentence_squeezed)
            tokens, originals, padded = squeezed.split(" "), words.split(" "), f" {squeezed} "
            # A bare keyword sentence ("who is this? STOP") is a command with nothing around it.
            hit = (
                self._command(padded, tokens, originals)
                or self._trailing_keyword(padded, tokens, originals)
                or self._phrase(padded)
            )
            if hit is not None:
                return hit
        return None

    def _command(self, padded: str, tokens: list[str], originals: list[str]) -> Classification | None:
        """A sentence that is only a command with polite or pointing words around it: "ok stop it pls"."""
        start = 0  # offset of the space before tokens[index] in padded
        for index, token in enumerate(tokens):
            for words, result, grammar in self._commands.get(token, ()):
                end = index + len(words)
                if tuple(tokens[index:end]) != words:
                    continue
                if len(words) == 1 and originals[index] in self._not_keywords:
                    continue
                if all(word in self._after for word in tokens[end:]) and not grammar.negated(padded, start):
                    return result
            if token not in self._before:
                return None
            start += len(token) + 1
        return None

    def _trailing_keyword(self, padded: str, tokens: list[str], originals: list[str]) -> Classification | None:
        """A sentence that ends in a request word: "wrong number stop", but not "we have got to stop"."""
        end = len(tokens)
        while end > 1 and tokens[end - 1] not in self._trailing and tokens[end - 1] in self._after:
            end -= 1
        if end < 2:
            return None  # a lone keyword is the command rule's business
        entry = self._trailing.get(tokens[end - 1])
        if entry is None or originals[end - 1] in self._not_keywords:
            return None
        result, grammar = entry
        # An adverb sits between a blocker and the keyword as often as not: "it will completely stop".
        before = end - 2
        while before > 0 and tokens[before].endswith("LY") and tokens[before] not in self._trailing:
            before -= 1
        if tokens[before] in self._blockers:
            return None
        start = len(" ".join(tokens[: end - 1])) + 1  # the space before the keyword
        return None if grammar.negated(padded, start) else result

    def _phrase(self, padded: str) -> Classification | None:
        """A revocation phrase anywhere in the sentence that no negation turns around."""
        if not self._any_phrase.search(padded):
            return None
        return _first_unnegated(self._phrases, padded)


def _first_unnegated(phrases: Iterable[_Phrase], padded: str) -> Classification | None:
    """The result of the first phrase that matches the padded sentence with no negation before it."""
    for phrase in phrases:
        for match in phrase.pattern.finditer(padded):
            if not phrase.grammar.negated(padded, match.start()):
                return phrase.result
    return None


_FIRST_UNSPACED = "\u1100"


class _Combined:
    """A quick rejection of most sentences, before the phrases are tried one by one.

    Whole-word phrases are filed under each character they can begin with (`_first_characters`), and
    at each word of the sentence only the phrases filed under its first character are tried, as one
    alternation anchored on the space before it. One alternation of every phrase in every language,
    tried at every word, made a plain question ("what time do you open tomorrow?") cost some 200 µs to
    classify against 2-5 µs for a keyword (bench/README.md). A phrase whose first characters cannot be
    read from its pattern is tried at every word. Phrases of scripts written without spaces get one
    search, only on text in them.
    """

    def __init__(self, phrases: Sequence[_Phrase]) -> None:
        always, by_first = [], {}
        for phrase in (phrase for phrase in phrases if phrase.bounded):
            first = _first_characters(phrase.source)
            if first is None:
                always.append(phrase.source)
                continue
            for character in first:
                by_first.setdefault(character, []).append(phrase.source)
        self._always = _alternation(always)
        self._by_first = {character: _alternation(sources + always) for character, sources in by_first.items()}
        anywhere = [f"(?:{phrase.source})" for phrase in phrases if not phrase.bounded]
        self._anywhere = re.compile("|".join(anywhere)) if anywhere else None

    def search(self, padded: str) -> bool:
        """Whether any phrase matches ``padded`` (a sentence with one space at each end)."""
        by_first, always = self._by_first, self._always
        space = 0
        last = len(padded) - 1
        while 0 <= space < last:
            pattern = by_first.get(padded[space + 1], always)
            if pattern is not None and pattern.match(padded, space):
                return True
            space = padded.find(" ", space + 1)
        # Scripts written without spaces (Han, kana; Hangul too) all lie at U+1100 and above.
        return self._anywhere is not None and max(padded) >= _FIRST_UNSPACED and bool(self._anywhere.search(padded))


def _alternation(sources: Sequence[str]) -> re.Pattern[str] | None:
    """Whole-word phrases as one pattern, matched on the space before a word."""
    return re.compile(" (?:" + "|".join(f"(?:{source})" for source in sources) + ")(?= )") if sources else None


def _first_characters(source: str) -> frozenset[str] | None:
    """Every character a match of the regular expression ``source`` can begin with; None when that
    cannot be told (a class of characters, a back-reference, a pattern that can match nothing, flags).

    Read from the parse tree of Python's own ``re`` (a private module: if it changes, every phrase is
    tried at every word, which is slower and still right; tests/unit/domain/test_keywords.py notices).
    """
    try:
        from re import _constants as sre
        from re import _parser

        parsed = _parser.parse(source)
        if parsed.state.flags & (re.IGNORECASE | re.VERBOSE):
            return None
        first, can_be_empty = _first_of(parsed, sre)
    except Exception:  # noqa: BLE001 - an unreadable pattern is tried everywhere, never dropped
        return None
    return None if first is None or can_be_empty else frozenset(first)


def _first_of(items, sre) -> tuple[set[str] | None, bool]:
    """(the characters a match of the sequence ``items`` can begin with or None for any, whether it
    can match the empty string)."""
    found: set[str] = set()
    for op, argument in items:
        if op is sre.LITERAL:
            return found | {chr(argument)}, False
        if op is sre.IN:
            for kind, value in argument:
                if kind is sre.LITERAL:
                    found.add(chr(value))
                elif kind is sre.RANGE and value[1] - value[0] < 1024:
                    found.update(map(chr, range(value[0], value[1] + 1)))
                else:  # a negated set, a category, a huge range
                    return None, False
            return found, False
        if op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
            continue  # zero width: what follows begins the match
        if op is sre.SUBPATTERN:
            _group, add_flags, _del_flags, inner = argument
            if add_flags & re.IGNORECASE:
                return None, False
            first, can_be_empty = _first_of(inner, sre)
        elif op is sre.ATOMIC_GROUP:
            first, can_be_empty = _first_of(argument, sre)
        elif op is sre.BRANCH:
            first, can_be_empty = set(), False
            for alternative in argument[1]:
                branch_first, branch_empty = _first_of(alternative, sre)
                if branch_first is None:
                    return None, False
                first |= branch_first
                can_be_empty = can_be_empty or branch_empty
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            least, _most, inner = argument
            first, can_be_empty = _first_of(inner, sre)
            can_be_empty = can_be_empty or least == 0
        else:  # any character, a category, a back-reference, a conditional
            return None, False
        if first is None:
            return None, False
        found |= first
        if not can_be_empty:
            return found, False
    return found, True


def _negation_regex(negations: Iterable[str], window: int) -> re.Pattern[str] | None:
    """Compile a pack's negations to a regex that must end ``window`` words or fewer before a match."""
    alternatives = "|".join(f"(?:{_squeeze(negation)})" for negation in negations)
    if not alternatives:
        return None
    return re.compile(rf" (?:{alternatives})(?: \S+){{0,{window}}}$")


@functools.lru_cache(maxsize=1024)
def _folded_join_keyword(keyword: str) -> tuple[str, str]:
    """The normalised and squeezed forms of a caller's join keyword."""
    words = normalise(keyword)
    return words, _squeeze(words)


def _join(words: str, squeezed: str, join_keywords: Mapping[str, str]) -> Classification | None:
    """Match the whole message against the caller's join keywords (exact first, then repeat-folded)."""
    program = join_keywords.get(words)
    if isinstance(program, str):
        return Classification(Intent.JOIN, words, None, program)
    for keyword, program in join_keywords.items():
        if not isinstance(keyword, str) or not isinstance(program, str):
            continue
        canonical, folded = _folded_join_keyword(keyword)
        if canonical and folded == squeezed:
            return Classification(Intent.JOIN, canonical, None, program)
    return None


@functools.cache
def default_engine() -> KeywordEngine:
    """The engine for the packs shipped in ``config/keywords``, loaded once per process."""
    return KeywordEngine.from_directory(Path(__file__).resolve().parents[2] / "config" / "keywords")
