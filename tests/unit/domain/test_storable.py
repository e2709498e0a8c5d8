"""gateway.domain.storable: what the store can hold, and the JSON checker the /v1 edge is built on."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain import storable
from gateway.domain.storable import MAX_DEPTH, NotJson, Problem, check_json, drop, path_text


def problems(text: str) -> list[tuple[str, str]]:
    return [(problem.field, problem.reason) for problem in check_json(text).problems]


def test_a_clean_document_has_no_problems_and_is_parsed_as_json_would():
    text = '{"to": "+14155552671", "body": "שלום \\u200f 😀 \\ud83d\\ude00", "n": [1, -2.5, 9223372036854775807]}'
    checked = check_json(text)
    assert checked.problems == () and checked.value == json.loads(text)


@pytest.mark.parametrize(("text", "field", "reason"), [
    ('{"a": "x\\u0000y"}', "a", "contains a NUL character (U+0000), which cannot be stored"),
    ('{"a": {"b": ["ok", "\\ud800"]}}', "a.b[1]", "contains a lone surrogate (U+D800)"),
    ('{"a": "\\udfff"}', "a", "contains a lone surrogate (U+DFFF)"),
    ('{"a": "\\ude00\\ud83d"}', "a", "lone surrogate (U+DE00)"),  # a pair in the wrong order is two lone ones
    ('{"evidence": {"no\\u0000te": 1}}', 'evidence["no\\u0000te"]', "has a name that contains a NUL"),
    ('{"odd key": {"\\ud800": 1}}', '["odd key"]["\\ud800"]', "has a name that contains a lone surrogate"),
    ('{"a": NaN}', "a", "is NaN, which JSON does not allow"),
    ('{"a": Infinity}', "a", "is Infinity"),
    ('{"a": -Infinity}', "a", "is -Infinity"),
    ('{"a": 1e309}', "a", "is a number too large to store"),
    ('{"a": -1.7976931348623157e309}', "a", "too large"),
    ('{"a": 9223372036854775808}', "a", "is an integer outside the 64-bit range"),
    ('{"a": -9223372036854775809}', "a", "outside the 64-bit range"),
    ('{"a": ' + "1" * 5000 + "}", "a", "outside the 64-bit range"),  # beyond what int() will even convert
    ('"\\u0000"', "$", "NUL"),
])
def test_each_problem_names_its_field(text, field, reason):
    [(found_field, found_reason)] = problems(text)
    assert found_field == field and reason in found_reason
    assert Problem(check_json(text).problems[0].path, found_reason).message() == f"{field} {found_reason}"


def test_the_64_bit_bounds_themselves_are_fine():
    assert problems("[9223372036854775807, -9223372036854775808, 1e308, 5e-324, 0.1]") == []


def test_depth_up_to_the_limit_is_fine_and_one_more_is_not():
    assert problems("[" * MAX_DEPTH + "]" * MAX_DEPTH) == []
    assert problems("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)) == [
        ("[0]" * MAX_DEPTH, f"nests arrays and objects more than {MAX_DEPTH} deep")]
    nested_objects = '{"a": ' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1)
    expected = f"nests arrays and objects more than {MAX_DEPTH} deep"
    assert problems(nested_objects) == [("a" + ".a" * (MAX_DEPTH - 1), expected)]


@pytest.mark.parametrize("depth", [1_000, 100_000, 1_000_000])
def test_nesting_too_deep_for_the_parser_is_a_problem_not_a_recursion_error(depth):
    text = '{"keep": 1, "evidence": {"list": [0, 1, ' + "[" * depth + "]" * depth + "]}}"
    checked = check_json(text)
    [problem] = checked.problems
    assert problem.field == "evidence.list[2]" + "[0]" * (MAX_DEPTH - 3)
    # The deep part is cut out (null where it was), the rest parsed.
    assert checked.value["keep"] == 1 and checked.value["evidence"]["list"][:2] == [0, 1]


def test_strings_holding_brackets_do_not_count_as_nesting():
    text = '{"a": "' + "[{" * 1000 + '", "b\\"[": ["]"]}'
    assert problems(text) == []
    deep = '{"x\\"[": "]]", "y": ' + "[" * 2000 + "]" * 2000 + "}"
    assert problems(deep)[0][0] == "y" + "[0]" * (MAX_DEPTH - 1)


def test_many_deep_containers_stop_after_a_bounded_number_of_cuts():
    text = "[" + ", ".join(["[" * 2000 + "]" * 2000] * 40) + "]"
    checked = check_json(text)
    assert checked.value is None and len(checked.problems) == 16


@pytest.mark.parametrize("text", ["", "{", '{"a": }', "[1, 2", "nope", '{"a": 1} x', "[" * 5000])
def test_what_is_not_json_raises_not_json(text):
    with pytest.raises(NotJson):
        check_json(text)


def test_drop_removes_what_the_problems_name_and_keeps_the_rest():
    text = '{"keep": "yes", "bad": "\\u0000", "list": ["a", "\\ud800", "b", NaN, "c"], "\\u0000k": 1}'
    checked = check_json(text)
    assert [p.field for p in checked.problems] == ["bad", "list[1]", "list[3]", '["\\u0000k"]']
    assert drop(checked.value, checked.problems) == {"keep": "yes", "list": ["a", "b", "c"]}
    assert drop("x", [Problem((), "why")]) is None


@pytest.mark.parametrize(("path", "text"), [
    ((), "$"),
    (("evidence", "note"), "evidence.note"),
    (("recipients", 3), "recipients[3]"),
    (("a b", 0, "c"), '["a b"][0].c'),
    (("e", "\u0000"), 'e["\\u0000"]'),
    (("x" * 500,), "x" * 199 + "…"),
])
def test_paths_read_like_code_and_stay_printable(path, text):
    assert path_text(path) == text


def test_text_helpers():
    assert storable.storable_text("a\x00b\ud800c") == "a\ufffdb\ufffdc"
    clean = "no change 😀"
    assert storable.storable_text(clean) is clean
    assert storable.without_unstorable("ST\x00OP\udfff") == "STOP"
    assert storable.escaped("a\x00\ud800é") == "a\\u0000\\ud800\\u00e9"
    assert storable.unstorable_reason("fine") is None


_odd_chars = st.sampled_from(["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\u200f", "\u202e", "😀", "\ufffd"])
_any_text = st.text(alphabet=st.one_of(st.characters(), _odd_chars), max_size=12)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_any_text, inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(_json_values)
def test_property_what_is_left_after_dropping_the_problems_is_storable(value):
    text = json.dumps(value)  # ASCII escapes for surrogates and NUL; NaN and Infinity as JavaScript has them
    checked = check_json(text)
    kept = drop(checked.value, checked.problems)
    # Nothing unstorable remains: the result encodes to UTF-8 and holds no NUL.
    encoded = json.dumps(kept, ensure_ascii=False, allow_nan=False).encode()
    assert b"\\u0000" not in encoded
    assert check_json(json.dumps(kept)).problems == ()
    if not checked.problems:  # then there was no NaN either: the document is what json makes of it
        assert kept == json.loads(text)
