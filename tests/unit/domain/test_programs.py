"""The programs file: validation with errors that name the program and key, definitions and their texts.

Storing programs, and the cache of them, is tests/integration/store/test_programs.py.
"""

import hashlib
import json
import re
from dataclasses import asdict

import pytest

from gateway.domain.programs import ProgramError, load_file

VALID = '''
[programs.deals]
name = "Acme Deals"
sender = "+15005550006"
category = "marketing"
frequency = "Up to 4 msgs/month"
max_messages = 4
per = "month"
help = "Acme Deals: help at acme.example. Reply STOP to cancel."
join_keywords = ["DEALS"]
'''
UNCAPPED = VALID.replace('frequency = "Up to 4 msgs/month"\nmax_messages = 4\nper = "month"',
                         'frequency = "Msg frequency varies"')


def write(tmp_path, text):
    path = tmp_path / "programs.toml"
    path.write_text(text)
    return path


def test_example_file_has_three_categories_on_two_senders(settings):
    specs = load_file(settings.programs_file)
    assert {s.category for s in specs} == {"marketing", "informational", "transactional"}
    assert len({s.sender or s.messaging_service for s in specs}) == 2


def test_defaults_and_confirmation_text(tmp_path):
    (spec,) = load_file(write(tmp_path, VALID))
    assert spec.double_opt_in is True
    assert spec.allowed_countries == ("US",)
    text = spec.text("confirmation")
    for needle in ("Acme Deals", "Up to 4 msgs/month", "Msg & data rates may apply", "YES", "HELP", "STOP"):
        assert needle in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('category = "marketing"', 'category = "spam"'), "program 'deals': category"),
        (('sender = "+15005550006"', 'sender = "5550006"'), "program 'deals': sender"),
        (('sender = "+15005550006"', 'messaging_service = "MG123"'), "program 'deals': messaging_service"),
        (('sender = "+15005550006"', 'sender = "+15005550006"\nmessaging_service = "MG' + "a" * 32 + '"'),
         "exactly one"),
        (('name = "Acme Deals"', 'name = ""'), "program 'deals': name"),
        (('join_keywords = ["DEALS"]', 'join_keywords = ["TWO WORDS"]'), "join_keywords"),
        (('join_keywords = ["DEALS"]', 'join_keywords = ["STOP"]'), "already means opt_out"),
        (('join_keywords = ["DEALS"]', 'join_keywords = ["YES"]'), "already means confirm"),
        (('join_keywords = ["DEALS"]', 'join_keywords = ["DEALS"]\ndaily_cap = 2'),
         'daily_cap: replaced by max_messages and per = "day"'),
        (("max_messages = 4", "max_messages = 0"), "max_messages: a whole number"),
        (("max_messages = 4", "max_messages = true"), "max_messages: a whole number"),
        (("max_messages = 4\n", ""), "max_messages: a whole number"),
        (('per = "month"', 'per = "fortnight"'), "per: one of day, week, month"),
        (('per = "month"\n', ""), "per: one of day, week, month"),
        # The disclosed text and the cap must say the same thing.
        (("max_messages = 4", "max_messages = 5"), "frequency: 'Up to 4 msgs/month' does not say the cap"),
        (('per = "month"', 'per = "week"'), "frequency: 'Up to 4 msgs/month' does not say the cap"),
        (('frequency = "Up to 4 msgs/month"', 'frequency = "Msg frequency varies"'), "does not say the cap"),
        # A promised count with no cap to keep it is the bug this guards against: only text.
        (('max_messages = 4\nper = "month"\n', ""), 'declare it as max_messages = 4 and per = "month"'),
        (('join_keywords = ["DEALS"]', 'join_keywords = ["DEALS"]\nallowed_countries = ["ZZ"]'), "allowed_countries"),
        (('join_keywords = ["DEALS"]',
          'join_keywords = ["DEALS"]\n[programs.deals.templates]\nconfirmation = "Deals! Reply YES."'),
         "templates.confirmation: must include"),
        (('join_keywords = ["DEALS"]', 'join_keywords = ["DEALS"]\n[programs.deals.templates]\nwelcome = "{nope}"'),
         "templates.welcome: bad placeholder"),
        (('join_keywords = ["DEALS"]', 'join_keywords = ["DEALS"]\nservice_numbers = ["+14155550199"]'),
         "service_numbers: only for a program that sends through a messaging_service"),
        (('sender = "+15005550006"', 'messaging_service = "MG' + "a" * 32 + '"\nservice_numbers = ["4155550199"]'),
         "service_numbers: a list of E.164 numbers"),
    ],
)
def test_invalid_programs_are_refused_naming_the_key(tmp_path, change, message):
    with pytest.raises(ProgramError, match=message):
        load_file(write(tmp_path, VALID.replace(*change)))


def test_join_keyword_may_not_be_shared_on_one_sender(tmp_path):
    other = VALID.replace("[programs.deals]", "[programs.more]")
    with pytest.raises(ProgramError, match="already used by 'deals'"):
        load_file(write(tmp_path, VALID + other))


def test_bad_toml_and_empty_files(tmp_path):
    with pytest.raises(ProgramError, match="not valid TOML"):
        load_file(write(tmp_path, "[programs"))
    with pytest.raises(ProgramError, match="no \\[programs"):
        load_file(write(tmp_path, "title = 'x'"))


LATER_KEYS = ("service_numbers", "max_messages", "per", "opt_out_handling", "twilio_opt_out_keywords",
              "twilio_opt_in_keywords", "twilio_help_keywords", "language", "translations", "ambiguous_replies")


def test_programs_without_the_keys_added_later_keep_their_version(tmp_path):
    """The keys came later (and daily_cap went): a definition that does not use them digests as it did before."""
    (spec,) = load_file(write(tmp_path, UNCAPPED))
    before = {k: v for k, v in asdict(spec).items() if k not in LATER_KEYS}
    before["daily_cap"] = None
    assert spec.version == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    (advanced,) = load_file(write(tmp_path, UNCAPPED + '\nopt_out_handling = "twilio_advanced"\n'))
    assert advanced.version != spec.version  # a key in use is part of the definition


# --- opt-out handling at Twilio, per sender ---------------------------------------------------------

def test_opt_out_handling_defaults_to_twilios_default_filtering(tmp_path):
    (spec,) = load_file(write(tmp_path, VALID))
    assert spec.opt_out_handling == "twilio_default"
    assert spec.filtering.handling == "twilio_default" and "STOP" in spec.filtering.opt_out


def test_advanced_opt_out_keywords_are_read_upper_case_and_keep_what_twilio_cannot_remove(tmp_path):
    (spec,) = load_file(write(tmp_path, VALID + '''
opt_out_handling = "twilio_advanced"
twilio_opt_out_keywords = ["stop", "alto"]
twilio_opt_in_keywords = ["start", "deals"]
'''))
    assert spec.twilio_opt_out_keywords == ("STOP", "ALTO")
    filtering = spec.filtering
    assert filtering.opt_out == {"STOP", "ALTO"} and filtering.opt_in == {"START", "DEALS"}
    assert filtering.help == {"HELP", "INFO"}  # not configured: Twilio's defaults
    (minimal,) = load_file(write(tmp_path, VALID + 'opt_out_handling = "twilio_advanced"\n'
                                              'twilio_opt_in_keywords = ["DEALS"]\n'))
    assert minimal.filtering.opt_in == {"START", "DEALS"}  # START cannot be removed at Twilio


@pytest.mark.parametrize("extra, message", [
    ('opt_out_handling = "twilio"', "opt_out_handling: one of twilio_default, twilio_advanced, none"),
    ("opt_out_handling = true", "opt_out_handling: one of"),
    ('twilio_opt_in_keywords = ["DEALS"]', 'only with opt_out_handling = "twilio_advanced"'),
    ('opt_out_handling = "none"\ntwilio_opt_out_keywords = ["ALTO"]', "only with opt_out_handling"),
    ('opt_out_handling = "twilio_advanced"\ntwilio_opt_out_keywords = ["OPT OUT"]', "single words"),
    ('opt_out_handling = "twilio_advanced"\ntwilio_help_keywords = "HELP"', "a list of single words"),
])
def test_a_bad_opt_out_handling_is_refused_with_the_key_named(tmp_path, extra, message):
    with pytest.raises(ProgramError, match=f"program 'deals': .*{re.escape(message)}"):
        load_file(write(tmp_path, VALID + extra + "\n"))


def test_programs_on_one_sender_must_agree_on_its_opt_out_handling(tmp_path):
    second = '''
[programs.alerts]
name = "Acme Alerts"
sender = "+15005550006"
category = "informational"
frequency = "Msg frequency varies"
help = "Acme Alerts: help at acme.example. Reply STOP to cancel."
opt_out_handling = "none"
'''
    with pytest.raises(ProgramError, match="program 'alerts': opt_out_handling .* same for every program on "
                                           r"\+15005550006 \(program 'deals' declares twilio_default\)"):
        load_file(write(tmp_path, VALID + second))
    # On another sender, another handling is fine.
    specs = load_file(write(tmp_path, VALID + second.replace("+15005550006", "+15005550007")))
    assert [s.opt_out_handling for s in specs] == ["twilio_default", "none"]


def test_the_cap_is_structure_and_the_disclosure_says_it(tmp_path):
    (spec,) = load_file(write(tmp_path, VALID))
    assert (spec.max_messages, spec.per, spec.frequency) == (4, "month", "Up to 4 msgs/month")
    # Without a frequency of its own, the disclosure is written from the cap.
    (written,) = load_file(write(tmp_path, VALID.replace('frequency = "Up to 4 msgs/month"\n', "")
                                 .replace("max_messages = 4", "max_messages = 2").replace('"month"', '"week"')))
    assert written.frequency == "Up to 2 msgs/week"
    assert "Up to 2 msgs/week" in written.text("confirmation")
    # Other wordings of the same promise are read too.
    (worded,) = load_file(write(tmp_path, VALID.replace("Up to 4 msgs/month", "Max 4 messages per month")))
    assert worded.max_messages == 4


@pytest.mark.parametrize("frequency", ["Msg frequency varies", "1-3 msgs per order", "Recurring messages"])
def test_programs_that_promise_no_count_need_no_cap(tmp_path, frequency):
    (spec,) = load_file(write(tmp_path, UNCAPPED.replace("Msg frequency varies", frequency)))
    assert (spec.max_messages, spec.per) == (None, None)


def test_a_stored_daily_cap_reads_as_a_cap_per_day(tmp_path):
    from gateway.domain.programs import spec_of

    (spec,) = load_file(write(tmp_path, UNCAPPED))
    stored = {k: v for k, v in asdict(spec).items() if k not in ("max_messages", "per")}

    class Stored:
        settings = {"spec": {**stored, "daily_cap": 3}}

    assert (spec_of(Stored).max_messages, spec_of(Stored).per) == (3, "day")


def test_a_stored_definition_read_again_is_the_same_and_a_replaced_one_is_read_anew(tmp_path):
    from gateway.domain.programs import spec_of

    (spec,) = load_file(write(tmp_path, UNCAPPED))

    class Stored:
        settings = {"spec": asdict(spec)}

    first = spec_of(Stored)
    assert first == spec and spec_of(Stored) is first  # built once for one stored definition
    Stored.settings = {"spec": {**asdict(spec), "name": "Renamed"}}  # as `programs load` stores a new one
    assert spec_of(Stored).name == "Renamed"
    assert spec_of(type("Equal", (), {"settings": {"spec": asdict(spec)}})) == spec  # an equal copy: equal


# --------------------------------------------------------------------------------------------------
# Languages: the program's own, and its replies in others


LANGUAGE_PROGRAM = """
[programs.p]
name = "P"
sender = "+15005550006"
category = "marketing"
frequency = "Msg frequency varies"
help = "P: help at p.example. Reply STOP to cancel."
"""


def test_replies_in_the_persons_language_else_the_programs(tmp_path):
    body = LANGUAGE_PROGRAM + (
        '[programs.p.templates.de]\nopt_out = "{name}: abgemeldet."\nhelp = "P: Hilfe."\n'
        '[programs.p.templates.zh]\nwrong_number = "{name}：谢谢告知。"\n'
    )
    (spec,) = load_file(write(tmp_path, body))
    assert spec.text("opt_out", "de") == "P: abgemeldet."
    assert spec.text("help", "de") == "P: Hilfe."
    assert spec.text("wrong_number", "zh-Hant") == "P：谢谢告知。"  # "zh" serves both scripts
    assert spec.text("opt_out", "fr") == spec.text("opt_out")  # no French: the program's English
    assert spec.text("opt_out").startswith("P: you're unsubscribed")
    assert spec.text("help", None) == "P: help at p.example. Reply STOP to cancel."
    assert spec.text("wrong_number").startswith("P: thanks for telling us.")
    assert spec.reply_language("de", "opt_out") == "de"
    assert spec.reply_language("de", "opt_in") == "en"


def test_a_program_written_in_another_language(tmp_path):
    (spec,) = load_file(write(tmp_path, LANGUAGE_PROGRAM + 'language = "es"\n'
                              '[programs.p.templates.en]\nopt_out = "P: unsubscribed."\n'))
    assert spec.language == "es"
    assert spec.text("opt_out", "en") == "P: unsubscribed."
    assert spec.text("opt_out", "es") == spec.text("opt_out")


@pytest.mark.parametrize(("extra", "named"), [
    ('language = "xx"\n', "language"),
    ('[programs.p.templates.xx]\nopt_out = "P: out."\n', "templates.xx"),
    ('[programs.p.templates.de]\nconfirmation = "P: ja?"\n', "templates.de.confirmation"),
    ('[programs.p.templates.de]\nopt_out = "{nom}: out."\n', "templates.de.opt_out"),
    ('[programs.p.templates.de]\nopt_out = "  "\n', "templates.de"),
    ('[programs.p.templates.en]\nopt_out = "P: out."\n', "templates.en"),
])
def test_bad_language_settings_are_refused_naming_the_key(tmp_path, extra, named):
    with pytest.raises(ProgramError, match=re.escape(named)):
        load_file(write(tmp_path, LANGUAGE_PROGRAM + extra))


def test_ambiguous_replies_opt_out_by_default_review_on_request_and_nothing_else(tmp_path):
    (spec,) = load_file(write(tmp_path, UNCAPPED))
    assert spec.ambiguous_replies == "opt_out"
    (review,) = load_file(write(tmp_path, UNCAPPED + '\nambiguous_replies = "review"\n'))
    assert review.ambiguous_replies == "review" and review.version != spec.version
    for bad in ('"ignore"', "true", '["review"]'):
        with pytest.raises(ProgramError, match="ambiguous_replies: \"opt_out\""):
            load_file(write(tmp_path, UNCAPPED + f"\nambiguous_replies = {bad}\n"))
