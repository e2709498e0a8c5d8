"""X-Twilio-Signature: the official twilio-python vectors through our implementation, and ours
against twilio-python's RequestValidator on arbitrary input."""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from gateway.twilio.signatures import compute_signature, request_signed, signature_matches, url_variants

# twilio-python tests/unit/test_request_validator.py
TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234", "From": "+14158675309",
          "To": "+18005551212"}
BASE_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
HTTPS_443_SIGNATURE = "kvajT1Ptam85bY51eRf/AJRuM3w="
HTTP_80_SIGNATURE = "0ZXoZLH/DfblKGATFgpif+LLRf4="
HTTP_1234_SIGNATURE = "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="
DUPLICATES = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234"), ("Digits", "1234")]
DUPLICATES_SIGNATURE = "IK+Dwps556ElfBT0I3Rgjkr1wJU="
JSON_BODY = '{"property": "value", "boolean": true}'
JSON_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
JSON_SIGNATURE = "a9nBmqA0ju/hNViExpshrM61xv4="

def test_the_signed_string_and_signature_of_the_official_vector():
    assert compute_signature(TOKEN, URL, PARAMS) == BASE_SIGNATURE


@pytest.mark.parametrize(("url", "signature"), [
    (URL, BASE_SIGNATURE),
    (URL, HTTPS_443_SIGNATURE),  # Twilio signed with :443, we were called without it
    ("https://mycompany.com:1234/myapp.php?foo=1&bar=2", BASE_SIGNATURE),  # an https port is dropped
    ("http://mycompany.com/myapp.php?foo=1&bar=2", HTTP_80_SIGNATURE),
    ("http://mycompany.com:1234/myapp.php?foo=1&bar=2", HTTP_1234_SIGNATURE),  # ... or kept
])
def test_official_vectors_validate(url, signature):
    assert signature_matches(signature, [TOKEN], url, PARAMS)
    assert RequestValidator(TOKEN).validate(url, PARAMS, signature)  # and agree with twilio-python


def test_duplicate_parameters_are_sorted_and_counted_once():
    assert compute_signature(TOKEN, URL, MultiDict(DUPLICATES)) == DUPLICATES_SIGNATURE


def test_json_body_is_checked_against_its_hash():
    url = f"{URL}&bodySHA256={JSON_HASH}"
    assert hashlib.sha256(JSON_BODY.encode()).hexdigest() == JSON_HASH
    assert signature_matches(JSON_SIGNATURE, [TOKEN], url, {}, raw_body=JSON_BODY.encode())
    assert not signature_matches(JSON_SIGNATURE, [TOKEN], url, {}, raw_body=JSON_BODY.replace("value", "evil").encode())


def test_tampering_fails():
    assert not signature_matches(BASE_SIGNATURE, [TOKEN], URL, {**PARAMS, "Digits": "9999"})
    assert not signature_matches(BASE_SIGNATURE, ["54321"], URL, PARAMS)
    assert not signature_matches(BASE_SIGNATURE, [TOKEN], URL.replace("foo=1", "foo=2"), PARAMS)
    assert not signature_matches("", [TOKEN], URL, PARAMS)


def test_sha256_uses_the_same_string_and_both_port_forms():
    sha256 = RequestValidator(TOKEN).compute_signature(URL, PARAMS, "HMAC_SHA256")
    assert compute_signature(TOKEN, URL, PARAMS, "HMAC_SHA256") == sha256
    assert signature_matches(sha256, [TOKEN], URL, PARAMS, "HMAC_SHA256")
    with_port = RequestValidator(TOKEN).compute_signature("https://mycompany.com:443/myapp.php?foo=1&bar=2", PARAMS,
                                                          "HMAC_SHA256")
    assert signature_matches(with_port, [TOKEN], URL, PARAMS, "HMAC_SHA256")
    assert not signature_matches(BASE_SIGNATURE, [TOKEN], URL, PARAMS, "HMAC_SHA256")  # no downgrade
    assert not signature_matches(sha256, [TOKEN], URL, PARAMS, "HMAC_SHA1")


def test_url_variants():
    assert url_variants(URL) == (URL, "https://mycompany.com:443/myapp.php?foo=1&bar=2")
    assert url_variants("http://127.0.0.1:5000/x") == ("http://127.0.0.1/x", "http://127.0.0.1:5000/x")


_params = st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=20), max_size=6)


@given(params=_params, path=st.text(alphabet="abc/?=&%.", max_size=20),
       algorithm=st.sampled_from(["HMAC_SHA1", "HMAC_SHA256"]))
def test_property_we_sign_exactly_as_twilio_python_does(params, path, algorithm):
    url = "https://example.com/" + path
    assert compute_signature(TOKEN, url, params, algorithm) == RequestValidator(TOKEN).compute_signature(
        url, params, algorithm)


def test_a_request_is_checked_with_the_algorithm_its_settings_header_names():
    sha256 = RequestValidator(TOKEN).compute_signature(URL, PARAMS, "HMAC_SHA256")
    settings = {"X-Twilio-Webhooks-Signature-Settings": "algorithm=HMAC_SHA256"}
    assert request_signed({"X-Twilio-Signature": sha256, **settings}, [TOKEN], URL, PARAMS, bytes)
    assert not request_signed({"X-Twilio-Signature": sha256}, [TOKEN], URL, PARAMS, bytes)
    assert request_signed({"X-Twilio-Signature": BASE_SIGNATURE}, [TOKEN], URL, PARAMS, bytes)
    assert not request_signed({}, [TOKEN], URL, PARAMS, bytes)
