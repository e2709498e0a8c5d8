"""Programs: what a programs file (TOML) may define, checked when it is loaded, and the texts a program sends.

Pure: the definitions are validated here once, by `smsgate programs load` and the tests, before
gateway/store/programs.py stores them; a stored program's definition comes back as a `ProgramSpec`
(`spec_of`) wherever its texts or disclosures are needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import phonenumbers

from gateway.domain.keywords import Intent, default_engine
from gateway.domain.numbers import is_e164
from gateway.domain.segments import count as count_segments
from gateway.domain.twilio_filter import Filtering, OptOutHandling

log = logging.getLogger(__name__)

CATEGORIES = ("marketing", "informational", "transactional")
SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MESSAGING_SERVICE = re.compile(r"^MG[0-9a-fA-F]{32}$")
KEYWORD = re.compile(r"^[A-Z0-9]{2,16}$")
RATES = "Msg & data rates may apply"

DEFAULT_TEMPLATES = {
    "confirmation": ("{name}: reply YES to confirm your subscription. {frequency}. " + RATES
                     + ". Reply HELP for help, STOP to cancel."),
    "welcome": "{name}: you're subscribed. {frequency}. " + RATES + ". Reply HELP for help, STOP to cancel.",
    "opt_out": "{name}: you're unsubscribed and will get no more messages. Reply START to resubscribe.",
    "opt_in": "{name}: you're resubscribed. {frequency}. " + RATES + ". Reply HELP for help, STOP to cancel.",
}
# Templates added after programs were first stored: a program that does not override one falls back to
# these when it is rendered, so its stored definition (and version) stays as it was.
LATER_TEMPLATES = {
    "wrong_number": "{name}: thanks for telling us. This number is off our lists and will get no more messages.",
}
# The texts that may be given in other languages ([programs.X.templates.<language>]): the replies to what a
# person texted in their language (a revocation, a wrong number, HELP, an opt-in word).
TRANSLATABLE = ("opt_out", "opt_in", "wrong_number", "help")
# What a confirmation text must carry (CTIA): checked when programs are loaded.
CONFIRMATION_MUST_SAY = {
    "the program's name": lambda text, spec: spec.name in text,
    "the message frequency": lambda text, spec: spec.frequency in text,
    f'"{RATES}"': lambda text, spec: RATES.lower() in text.lower(),
    "how to reply YES": lambda text, spec: re.search(r"\bYES\b", text) is not None,
    "how to reply HELP": lambda text, spec: re.search(r"\bHELP\b", text) is not None,
    "how to reply STOP": lambda text, spec: re.search(r"\bSTOP\b", text) is not None,
}


class ProgramError(ValueError):
    """The programs file is wrong; the message names the program and the key."""


PERIODS = ("day", "week", "month")
# A disclosed frequency that promises a number of messages per period: "Up to 4 msgs/month",
# "2 messages per week", "max 3 msgs a day". "Msg frequency varies" or "1-3 msgs per order" promise
# no count per calendar period and match nothing.
_NUMERIC_FREQUENCY = re.compile(
    r"(\d+)\s*(?:msgs?|messages?|texts?|sms)\s*(?:/|per|a|an|each|every)\s*(day|week|month)s?\b", re.IGNORECASE)


def frequency_text(max_messages: int, per: str) -> str:
    """The disclosure for a cap, when the programs file gives no `frequency` of its own."""
    return f"Up to {max_messages} msg{'s' if max_messages != 1 else ''}/{per}"


def promised_cap(frequency: str) -> tuple[int, str] | None:
    """The (count, period) a disclosed frequency promises, or None when it promises no count per period."""
    found = _NUMERIC_FREQUENCY.search(frequency)
    return (int(found.group(1)), found.group(2).lower()) if found else None


@dataclass(frozen=True)
class ProgramSpec:
    slug: str
    name: str
    category: str
    frequency: str
    help: str
    sender: str | None = None
    messaging_service: str | None = None
    terms_url: str | None = None
    privacy_url: str | None = None
    join_keywords: tuple[str, ...] = ()
    double_opt_in: bool = True
    allowed_countries: tuple[str, ...] = ()
    # The frequency the person agreed to, as a cap: at most `max_messages` of this program's texts per
    # number per calendar `per` (day, week from Monday, month) in the recipient's time zone. None: no
    # count was promised ("Msg frequency varies", transactional programs); state caps still apply.
    max_messages: int | None = None
    per: str | None = None
    # Messages per second the provider takes from this program's sender; a sender shared by several
    # programs goes at the slowest of their rates (gateway/services/throughput.py). None: the sender's default.
    mps: int | None = None
    # The numbers a Messaging Service program sends from, as far as the programs file says: they are
    # ours, and no one may subscribe them (a program with a `sender` has that one).
    service_numbers: tuple[str, ...] = ()
    # How opt-outs are handled at Twilio for this program's sender (gateway/domain/twilio_filter.py);
    # every program on one sender declares the same. The keyword lists: Advanced Opt-Out's only.
    opt_out_handling: str = OptOutHandling.TWILIO_DEFAULT.value
    twilio_opt_out_keywords: tuple[str, ...] = ()
    twilio_opt_in_keywords: tuple[str, ...] = ()
    twilio_help_keywords: tuple[str, ...] = ()
    templates: dict[str, str] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    # The language the program's own texts are written in (a keyword pack's tag), and the replies it has
    # in others: language -> {template or "help": text}. A reply goes out in the language the person
    # texted in when the program has it there, else in this one.
    language: str = "en"
    translations: dict[str, dict[str, str]] = field(default_factory=dict)
    # What a reply that may or may not revoke ("no thanks", "not interested": Intent.AMBIGUOUS) does:
    # "opt_out" ends this program's consent like STOP (the default, and the safe one for marketing);
    # "review" keeps it, records the reply in the ledger and marks the text for staff to resolve.
    ambiguous_replies: str = "opt_out"

    @property
    def filtering(self) -> Filtering:
        """Twilio's opt-out filtering on this program's sender."""
        return Filtering.of(self.opt_out_handling, self.twilio_opt_out_keywords, self.twilio_opt_in_keywords,
                            self.twilio_help_keywords)

    @property
    def sender_key(self) -> str:
        return self.sender or self.messaging_service or ""

    def text(self, template: str, language: str | None = None, *, name: str | None = None,
             frequency: str | None = None) -> str:
        """Render one of the program's message templates ("help": its HELP text), in `language` when
        the program has that text in it, else in the program's own language. `name` and `frequency`:
        what the text names instead of this program's (one reply for several programs)."""
        translated = self.translation(language)
        if template in translated:
            source = translated[template]
        elif template == "help":
            return self.help
        else:
            source = self.templates.get(template) or LATER_TEMPLATES[template]
        return source.format(
            name=name or self.name, frequency=frequency or self.frequency, help=self.help,
            terms_url=self.terms_url or "", privacy_url=self.privacy_url or "",
        )

    def translation(self, language: str | None) -> Mapping[str, str]:
        """The program's texts in `language` ("zh-Hant", falling back to "zh"); empty when it has none."""
        if not language or language == self.language:
            return {}
        return self.translations.get(language) or self.translations.get(language.partition("-")[0]) or {}

    def reply_language(self, language: str | None, template: str) -> str:
        """The language `text(template, language)` is written in."""
        return language if template in self.translation(language) else self.language

    @property
    def version(self) -> str:
        """A digest of the whole definition: evidence cites it as the version of what was shown."""
        definition = asdict(self)
        for added_later, default in _ADDED_LATER.items():
            if definition[added_later] == default:
                del definition[added_later]  # programs that do not use it keep their version
        definition["daily_cap"] = None  # a key since replaced by max_messages: kept, so versions stay
        return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()


# Keys added after programs were first stored, with their defaults: left out of `version` at the default.
_ADDED_LATER = {"service_numbers": (), "max_messages": None, "per": None,
                "opt_out_handling": OptOutHandling.TWILIO_DEFAULT.value, "twilio_opt_out_keywords": (),
                "twilio_opt_in_keywords": (), "twilio_help_keywords": (), "language": "en", "translations": {},
                "ambiguous_replies": "opt_out"}
_TWILIO_KEYWORD_LISTS = ("twilio_opt_out_keywords", "twilio_opt_in_keywords", "twilio_help_keywords")
_KNOWN = {"name", "sender", "messaging_service", "category", "frequency", "help", "terms_url", "privacy_url",
          "join_keywords", "double_opt_in", "allowed_countries", "max_messages", "per", "mps", "service_numbers",
          "templates", "opt_out_handling", "language", "ambiguous_replies", *_TWILIO_KEYWORD_LISTS}
AMBIGUOUS_REPLIES = ("opt_out", "review")


def _spec(slug: str, raw: dict) -> ProgramSpec:
    def fail(key: str, problem: str) -> ProgramError:
        return ProgramError(f"program {slug!r}: {key}: {problem}")

    if not SLUG.match(slug):
        raise fail("slug", "use lower-case letters, digits, - and _ (at most 64)")
    max_messages, per = _cap(raw, fail)
    if "frequency" not in raw and max_messages is not None:
        raw = {**raw, "frequency": frequency_text(max_messages, per)}
    for key in ("name", "category", "frequency", "help"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise fail(key, "required text" + (" (or give max_messages and per, and the text is written from them)"
                                               if key == "frequency" else ""))
    promised = promised_cap(raw["frequency"])
    if max_messages is None and promised is not None:
        raise fail("frequency", f"{raw['frequency']!r} promises a cap: declare it as max_messages = {promised[0]} "
                                f"and per = \"{promised[1]}\" so that the gateway keeps it")
    if max_messages is not None and promised != (max_messages, per):
        raise fail("frequency", f"{raw['frequency']!r} does not say the cap max_messages = {max_messages}, "
                                f"per = \"{per}\" (write e.g. {frequency_text(max_messages, per)!r}, or leave "
                                "frequency out and it is written from the cap)")
    if raw["category"] not in CATEGORIES:
        raise fail("category", f"one of {', '.join(CATEGORIES)}")
    sender, service = raw.get("sender"), raw.get("messaging_service")
    if bool(sender) == bool(service):
        raise fail("sender", "give exactly one of sender (E.164) or messaging_service (MG…)")
    if sender and not is_e164(sender):
        raise fail("sender", f"{sender!r} is not an E.164 number")
    if service and not MESSAGING_SERVICE.match(service):
        raise fail("messaging_service", "expected MG followed by 32 hex digits")
    service_numbers = raw.get("service_numbers", [])
    if not isinstance(service_numbers, list) or not all(isinstance(n, str) and is_e164(n) for n in service_numbers):
        raise fail("service_numbers", "a list of E.164 numbers")
    if service_numbers and not service:
        raise fail("service_numbers", "only for a program that sends through a messaging_service")
    keywords = raw.get("join_keywords", [])
    if not isinstance(keywords, list) or not all(isinstance(k, str) and KEYWORD.match(k.upper()) for k in keywords):
        raise fail("join_keywords", "a list of single words, 2-16 letters or digits")
    double_opt_in = raw.get("double_opt_in", True)
    if not isinstance(double_opt_in, bool):
        raise fail("double_opt_in", "true or false")
    countries = raw.get("allowed_countries")
    if countries is None:
        region = phonenumbers.region_code_for_number(phonenumbers.parse(sender)) if sender else None
        countries = [region or "US"]
    if not isinstance(countries, list) or not all(c in phonenumbers.SUPPORTED_REGIONS for c in countries):
        raise fail("allowed_countries", "a list of ISO region codes, e.g. [\"US\", \"CA\"]")
    mps = raw.get("mps")
    if mps is not None and (isinstance(mps, bool) or not isinstance(mps, int) or not 1 <= mps <= 10_000):
        raise fail("mps", "a whole number of messages per second, 1 to 10000")
    handling = raw.get("opt_out_handling", OptOutHandling.TWILIO_DEFAULT.value)
    if handling not in {mode.value for mode in OptOutHandling}:
        raise fail("opt_out_handling", "one of " + ", ".join(mode.value for mode in OptOutHandling)
                   + " (how Twilio handles STOP/START/HELP on this sender)")
    twilio_keywords = {}
    for key in _TWILIO_KEYWORD_LISTS:
        words = raw.get(key, [])
        if not isinstance(words, list) or not all(isinstance(w, str) and KEYWORD.match(w.upper()) for w in words):
            raise fail(key, "a list of single words, 2-16 letters or digits")
        if words and handling != OptOutHandling.TWILIO_ADVANCED:
            raise fail(key, "only with opt_out_handling = \"twilio_advanced\" (the keywords configured in "
                            "Advanced Opt-Out)")
        twilio_keywords[key] = tuple(dict.fromkeys(w.upper() for w in words))
    ambiguous_replies = raw.get("ambiguous_replies", "opt_out")
    if ambiguous_replies not in AMBIGUOUS_REPLIES:
        raise fail("ambiguous_replies", "\"opt_out\" (a reply such as \"no thanks\" ends consent, the default) or "
                                        "\"review\" (it keeps consent and is listed for staff to resolve)")
    languages = _languages()
    language = raw.get("language", "en")
    if language not in languages:
        raise fail("language", f"{language!r} is not a language of the keyword packs ({', '.join(languages)})")
    templates = dict(DEFAULT_TEMPLATES)
    overrides = raw.get("templates", {})
    if not isinstance(overrides, dict):
        raise fail("templates", "a table of texts")
    translations = {key: value for key, value in overrides.items() if isinstance(value, dict)}
    overrides = {key: value for key, value in overrides.items() if not isinstance(value, dict)}
    if not all(isinstance(v, str) for v in overrides.values()):
        raise fail("templates", "a table of texts")
    unknown_templates = set(overrides) - set(DEFAULT_TEMPLATES) - set(LATER_TEMPLATES)
    if unknown_templates:
        raise fail("templates", f"unknown template {sorted(unknown_templates)[0]!r}")
    templates.update(overrides)
    for tag, texts in translations.items():
        where = f"templates.{tag}"
        if tag not in languages and tag not in {known.partition("-")[0] for known in languages}:
            raise fail(where, f"{tag!r} is not a language of the keyword packs ({', '.join(languages)}) "
                              "nor a template name")
        if tag == language:
            raise fail(where, f"{tag!r} is the program's own language: write these texts in [templates] and help")
        unknown = sorted(set(texts) - set(TRANSLATABLE))
        if unknown:
            raise fail(f"{where}.{unknown[0]}", f"not a text given per language (one of {', '.join(TRANSLATABLE)})")
        if not texts or not all(isinstance(text, str) and text.strip() for text in texts.values()):
            raise fail(where, "a table of non-empty texts")
    spec = ProgramSpec(
        slug=slug, name=raw["name"].strip(), category=raw["category"], frequency=raw["frequency"].strip(),
        help=raw["help"].strip(), sender=sender, messaging_service=service, terms_url=raw.get("terms_url"),
        privacy_url=raw.get("privacy_url"), join_keywords=tuple(k.upper() for k in keywords),
        double_opt_in=double_opt_in, allowed_countries=tuple(countries), max_messages=max_messages, per=per, mps=mps,
        service_numbers=tuple(service_numbers), opt_out_handling=handling, **twilio_keywords, templates=templates,
        extra={k: v for k, v in raw.items() if k not in _KNOWN}, language=language,
        ambiguous_replies=ambiguous_replies,
        translations={tag: {key: text.strip() for key, text in texts.items()} for tag, texts in translations.items()},
    )
    rendered = [(f"templates.{t}", t, None) for t in templates]
    rendered += [(f"templates.{tag}.{t}", t, tag) for tag, texts in translations.items() for t in texts]
    for where, template, tag in rendered:
        try:
            spec.text(template, tag)
        except (KeyError, IndexError, ValueError) as error:
            raise fail(where, f"bad placeholder {error}") from None
    confirmation = spec.text("confirmation")
    for what, check in CONFIRMATION_MUST_SAY.items():
        if not check(confirmation, spec):
            raise fail("templates.confirmation", f"must include {what}")
    # A text longer than one SMS still goes out, in parts that each cost a message: warn, don't refuse.
    for template, text in [*((t, spec.text(t)) for t in templates), ("help", spec.help)]:
        parts = count_segments(text).segments
        if parts > 1:
            log.warning("program %r: the %s text takes %d SMS segments; one fits 160 GSM-7 or 70 UCS-2 characters",
                        slug, template, parts)
    return spec


def _cap(raw: dict, fail) -> tuple[int | None, str | None]:
    if "daily_cap" in raw:
        # One way to cap a program: the old rolling-24-hour daily_cap became max_messages with per = "day".
        raise fail("daily_cap", 'replaced by max_messages and per = "day" (a calendar day in the recipient\'s zone)')
    max_messages, per = raw.get("max_messages"), raw.get("per")
    if max_messages is None and per is None:
        return None, None
    if isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1:
        raise fail("max_messages", "a whole number of messages, at least 1 (with per)")
    if per not in PERIODS:
        raise fail("per", f"one of {', '.join(PERIODS)} (with max_messages)")
    return max_messages, per


def _languages() -> tuple[str, ...]:
    """The languages of the shipped keyword packs: those a text can be recognised in."""
    return default_engine().languages


def load_file(path: Path) -> list[ProgramSpec]:
    """Parse and validate a programs file; raise ProgramError naming the problem."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ProgramError(f"{path}: not valid TOML ({error})") from None
    programs = data.get("programs")
    if not isinstance(programs, dict) or not programs:
        raise ProgramError(f"{path}: no [programs.<slug>] tables")
    specs = [_spec(slug, raw) for slug, raw in programs.items()]
    seen: dict[tuple[str, str], str] = {}
    handling_of: dict[str, ProgramSpec] = {}
    for spec in specs:
        # Opt-out handling belongs to the sender at Twilio: its programs cannot disagree about it.
        first = handling_of.setdefault(spec.sender_key, spec)
        if spec.filtering != first.filtering:
            raise ProgramError(f"program {spec.slug!r}: opt_out_handling and the twilio_*_keywords must be the same "
                               f"for every program on {spec.sender_key} (program {first.slug!r} declares "
                               f"{first.opt_out_handling}); Twilio handles opt-outs per sender")
        for keyword in spec.join_keywords:
            meaning = default_engine().classify(keyword).intent
            if meaning is not Intent.OTHER:
                # Built-in keywords win over join keywords, so this one could never join anyone.
                raise ProgramError(f"program {spec.slug!r}: join keyword {keyword} already means {meaning.value}")
            key = (spec.sender or spec.messaging_service or "", keyword)
            if key in seen:
                raise ProgramError(f"program {spec.slug!r}: join keyword {keyword} is already used by "
                                   f"{seen[key]!r} on the same sender")
            seen[key] = spec.slug
    return specs


class StoredProgram(Protocol):
    """A stored program, as far as its definition goes (gateway.store.models.Program is one)."""

    settings: Mapping[str, Any]


def spec_of(program: StoredProgram) -> ProgramSpec:
    """The definition a stored program was loaded from.

    Built once per stored definition: every inbound text asks for its programs' replies, and the
    programs' cache hands out the same stored copies for seconds at a time. A stored definition is
    replaced, never changed in place (it is a JSON column's value), so its identity is its key; the
    entry holds it, so the identity cannot be reused while cached."""
    stored = program.settings["spec"]
    hit = _SPECS.get(id(stored))
    if hit is not None and hit[0] is stored:
        return hit[1]
    spec = _spec_from(stored)
    if len(_SPECS) >= _SPECS_LIMIT:
        _SPECS.clear()  # the programs' cache reloads every few seconds: old copies must not pile up here
    _SPECS[id(stored)] = (stored, spec)
    return spec


_SPECS: dict[int, tuple[Mapping[str, Any], ProgramSpec]] = {}
_SPECS_LIMIT = 256


def _spec_from(stored: Mapping[str, Any]) -> ProgramSpec:
    data = dict(stored)
    data["join_keywords"] = tuple(data["join_keywords"])
    data["allowed_countries"] = tuple(data["allowed_countries"])
    data["service_numbers"] = tuple(data.get("service_numbers", ()))
    for key in _TWILIO_KEYWORD_LISTS:
        data[key] = tuple(data.get(key, ()))
    daily_cap = data.pop("daily_cap", None)
    if daily_cap and not data.get("max_messages"):
        # Stored before max_messages existed: the same cap, counted per calendar day.
        data.update(max_messages=daily_cap, per="day")
    data["translations"] = dict(data.get("translations", {}))
    return ProgramSpec(**data)
