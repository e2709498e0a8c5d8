"""Classify one inbound SMS body as opt-out, opt-in, confirm, help, join or other.

Pure Python: the keyword packs in ``config/keywords/*.toml`` are data, compiled once by
``KeywordEngine.from_directory``. Matching has two layers:

* whole-message keywords ("STOP", "Arrêt!!", "stooop"), compared after ``normalise`` and
  repeat-folding, the way carriers and Twilio treat a bare keyword;
* free-text revocations ("please stop texting me", "who is this? stop"), because the FCC's 2024
  order (FCC 24-24) makes any reply that a reasonable person reads as a revocation binding.

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
        """True for OPT_OUT and OPT_OUT_ALL."""
        return self.intent in _OPT_OUTS


_OPT_OUTS = frozenset({Intent.OPT_OUT, Intent.OPT_OUT_ALL})
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


def _fold_code_point(code_point: int) -> str:
    """Fold one character: upper-case letters and digits without marks, a space, a boundary or ''."""
    char = chr(code_point)
    if char in _APOSTROPHES:
        return ""
    if char.isascii():
        if char.isalnum():
            return char.upper()
        return _BOUNDARY if char in _ASCII_BOUNDARIES else " "
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
_REPEATS = re.compile(r"([^\W\d_])\1+")
_ASCII_REPEATS = re.compile(r"([A-Z])\1+")  # same on ASCII text, and several times faster


def _fold(text: str) -> str:
    """Upper-case, strip accents and apostrophes; punctuation to spaces, sentence ends to newlines."""
    return text.translate(_FOLD_TABLE)


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
    "opt_in": Intent.OPT_IN,
    "confirm": Intent.CONFIRM,
    "help": Intent.HELP,
}
_KEYWORD_KEYS = frozenset(_KEYWORD_INTENTS) | {"not_keywords"}
_FREE_TEXT_LISTS = ("commands", "before", "after", "trailing", "not_before_trailing", "phrases", "negations")
_FREE_TEXT_KEYS = frozenset(_FREE_TEXT_LISTS) | {"negation_window"}
_ESCAPES = re.compile(r"\\.")
_LETTER_RUNS = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class KeywordPack:
    """One language's keywords and free-text rules, as read from a TOML file."""

    language: str
    source: str
    keywords: Mapping[Intent, tuple[str, ...]] = field(default_factory=dict)
    not_keywords: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    trailing: tuple[str, ...] = ()
    not_before_trailing: tuple[str, ...] = ()
    phrases: tuple[str, ...] = ()
    negations: tuple[str, ...] = ()
    negation_window: int = 2

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
        for name in ("phrases", "negations"):
            for pattern in lists[name]:
                _check_pattern(pattern, lambda problem, name=name: fail(f"free_text.{name}", problem))
        window = free_text.get("negation_window", 2)
        if not isinstance(window, int) or isinstance(window, bool) or not 0 <= window <= 5:
            raise fail("free_text.negation_window", "must be an integer from 0 to 5")
        return cls(
            language=language.strip(),
            source=source,
            keywords={
                intent: words(f"keywords.{key}", keywords_table.get(key, []))
                for key, intent in _KEYWORD_INTENTS.items()
            },
            not_keywords=words("keywords.not_keywords", keywords_table.get("not_keywords", [])),
            negation_window=window,
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
        for pack in packs:
            self._compile(pack)

        # "stop STOP stop": opt-out words may follow a command like any other word about the texts.
        self._after.update(words[0] for entries in self._commands.values() for words, *_ in entries if len(words) == 1)
        for entries in self._commands.values():
            entries.sort(key=lambda entry: -len(entry[0]))
        # One combined search rejects most sentences before the phrases are tried one by one.
        self._any_phrase = (
            re.compile(" (?:" + "|".join(phrase.pattern.pattern[1:] for phrase in self._phrases) + ")")
            if self._phrases
            else None
        )

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
        for source in pack.phrases:
            pattern = re.compile(f" (?:{_squeeze(source)})(?= )")
            self._phrases.append(_Phrase(pattern, free_text[Intent.OPT_OUT], grammar))

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
        folded = _fold(text)
        whole = _words(folded)
        if not whole:
            return _OTHER
        # Squeezing never crosses a space or a sentence boundary, so one pass serves every sentence.
        folded_squeezed = _squeeze(folded)
        squeezed = _words(folded_squeezed)
        hit = self._keyword(whole, squeezed)
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

    def _revocation(self, folded: str, folded_squeezed: str) -> Classification | None:
        """Find a free-text opt-out in any sentence of the message."""
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
        if tokens[end - 2] in self._blockers:
            return None
        start = len(" ".join(tokens[: end - 1])) + 1  # the space before the keyword
        return None if grammar.negated(padded, start) else result

    def _phrase(self, padded: str) -> Classification | None:
        """A revocation phrase anywhere in the sentence that no negation turns around."""
        if self._any_phrase is None or self._any_phrase.search(padded) is None:
            return None
        for phrase in self._phrases:
            for match in phrase.pattern.finditer(padded):
                if not phrase.grammar.negated(padded, match.start()):
                    return phrase.result
        return None


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
