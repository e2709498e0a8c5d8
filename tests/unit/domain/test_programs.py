"""The programs file: validation with errors that name the program and key, definitions and their texts.

Storing programs, and the cache of them, is tests/integration/store/test_programs.py.
"""

import hashlib
import json
from dataclasses import asdict

import pytest

from gateway.domain.programs import ProgramError, load_file

VALID = '''
[programs.deals]
name = "Acme Deals"
sender = "+15005550006"
category = "marketing"
frequency = "Up to 4 msgs/month"
help = "Acme Deals: help at acme.example. Reply STOP to cancel."
join_keywords = ["DEALS"]
'''


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
        (('join_keywords = ["DEALS"]', 'join_keywords = ["DEALS"]\ndaily_cap = 0'), "daily_cap"),
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


def test_programs_without_service_numbers_keep_their_version(tmp_path):
    """The key came later: a definition that does not use it digests as it did before."""
    (spec,) = load_file(write(tmp_path, VALID))
    before = {k: v for k, v in asdict(spec).items() if k != "service_numbers"}
    assert spec.version == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
