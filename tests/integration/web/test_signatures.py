"""X-Twilio-Signature: the official twilio-python vectors, through our code and through the app;
token rotation; HMAC-SHA256 on request; and a bad signature leaves nothing but a counter."""

import dataclasses
import hashlib
import json
from urllib.parse import urlencode

import pytest
from flask import Blueprint
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from gateway.config import SANDBOX_AUTH_TOKEN, load_settings
from gateway.store.models import Consent, InboundMessage, LedgerEvent, PhoneNumber
from gateway.web.app import create_app
from gateway.web.auth import twilio_signed
from tests.conftest import REAL_AUTH_TOKEN, REAL_TWILIO_ENV
from tests.unit.twilio.test_signatures import (
    BASE_SIGNATURE,
    DUPLICATES,
    DUPLICATES_SIGNATURE,
    HTTP_80_SIGNATURE,
    HTTP_1234_SIGNATURE,
    HTTPS_443_SIGNATURE,
    JSON_BODY,
    JSON_HASH,
    JSON_SIGNATURE,
    PARAMS,
    TOKEN,
    URL,
)

SHA256_SETTINGS = "key=webhooks_sharedkey_0123,algorithm=HMAC_SHA256"
SMS = "/webhooks/twilio/sms"


# --- the vectors through the Flask app ---------------------------------------------------------------

def _app_at(test_env, base_url, **env):
    """An app whose PUBLIC_BASE_URL and token are the vectors', with a signed echo route at /myapp.php."""
    app = create_app(load_settings(env={**test_env, **REAL_TWILIO_ENV, "PUBLIC_BASE_URL": base_url,
                                        "TWILIO_AUTH_TOKEN": TOKEN, **env}))
    bp = Blueprint("vector_echo", __name__)

    @bp.post("/myapp.php")
    @twilio_signed
    def echo():
        return "ok", 200

    app.register_blueprint(bp)
    return app


@pytest.fixture(scope="module")
def mycompany(test_env):
    apps = {base: _app_at(test_env, base) for base in (
        "https://mycompany.com", "https://mycompany.com:443", "http://mycompany.com", "http://mycompany.com:1234")}
    yield {base: app.test_client() for base, app in apps.items()}
    for app in apps.values():
        app.extensions["gateway"].db.dispose()


def _post(client, body, signature, query="foo=1&bar=2", **headers):
    return client.post(f"/myapp.php?{query}", data=body, content_type="application/x-www-form-urlencoded",
                       headers={"X-Twilio-Signature": signature, **headers})


@pytest.mark.parametrize(("base", "signature"), [
    ("https://mycompany.com", BASE_SIGNATURE),
    ("https://mycompany.com", HTTPS_443_SIGNATURE),
    ("https://mycompany.com:443", BASE_SIGNATURE),
    ("https://mycompany.com:443", HTTPS_443_SIGNATURE),
    ("http://mycompany.com", HTTP_80_SIGNATURE),
    ("http://mycompany.com:1234", HTTP_1234_SIGNATURE),
])
def test_official_vectors_through_the_app(mycompany, base, signature):
    assert _post(mycompany[base], urlencode(PARAMS), signature).status_code == 200


def test_official_vectors_through_the_app_refuse_tampering(mycompany):
    client = mycompany["https://mycompany.com"]
    assert _post(client, urlencode({**PARAMS, "Digits": "9999"}), BASE_SIGNATURE).status_code == 403
    assert _post(client, urlencode(PARAMS), BASE_SIGNATURE, query="foo=1&bar=3").status_code == 403
    assert _post(client, urlencode(PARAMS), BASE_SIGNATURE, query="bar=2&foo=1").status_code == 403
    # Signed for http, called as https: the scheme is part of what is signed.
    assert _post(client, urlencode(PARAMS), HTTP_80_SIGNATURE).status_code == 403


def test_duplicate_parameters_through_the_app(mycompany):
    assert _post(mycompany["https://mycompany.com"], urlencode(DUPLICATES), DUPLICATES_SIGNATURE).status_code == 200


def test_a_json_body_must_match_its_signed_hash(mycompany):
    client = mycompany["https://mycompany.com"]

    def post(body):
        return client.post(f"/myapp.php?foo=1&bar=2&bodySHA256={JSON_HASH}", data=body,
                           content_type="application/json", headers={"X-Twilio-Signature": JSON_SIGNATURE})

    assert post(JSON_BODY).status_code == 200
    assert post(json.dumps({"property": "evil", "boolean": True})).status_code == 403


def test_sha256_through_the_app_when_the_header_asks(mycompany):
    client = mycompany["https://mycompany.com"]
    sha256 = RequestValidator(TOKEN).compute_signature(URL, PARAMS, "HMAC_SHA256")
    settings_header = {"X-Twilio-Webhooks-Signature-Settings": SHA256_SETTINGS}
    assert _post(client, urlencode(PARAMS), sha256, **settings_header).status_code == 200
    assert _post(client, urlencode(PARAMS), sha256).status_code == 403  # no header: SHA1 expected
    assert _post(client, urlencode(PARAMS), BASE_SIGNATURE, **settings_header).status_code == 403
    unknown = {"X-Twilio-Webhooks-Signature-Settings": "key=k,algorithm=HMAC_SHA512"}
    assert _post(client, urlencode(PARAMS), sha256, **unknown).status_code == 403


# --- our own webhook ----------------------------------------------------------------------------------

def _stored(db):
    with db.sessions() as session:
        return tuple(session.scalar(select(func.count()).select_from(m))
                     for m in (InboundMessage, PhoneNumber, Consent, LedgerEvent))


def _rejected(path=SMS):
    return REGISTRY.get_sample_value("smsgate_webhook_rejected_total", {"path": path}) or 0.0


STOP = {"MessageSid": "SM" + "1" * 32, "From": "+14155552671", "To": "+15005550006", "Body": "STOP"}


@pytest.mark.parametrize("signature", [None, "", "bm90IGEgc2lnbmF0dXJl", "é-not-ascii", BASE_SIGNATURE])
def test_a_missing_or_bad_signature_is_403_and_leaves_only_a_counter(client, db, signature):
    before = _rejected()
    headers = {} if signature is None else {"X-Twilio-Signature": signature}
    response = client.post(SMS, data=urlencode(STOP), content_type="application/x-www-form-urlencoded",
                           headers=headers)
    assert response.status_code == 403
    assert _stored(db) == (0, 0, 0, 0)
    assert _rejected() == before + 1


def test_a_signature_for_other_parameters_is_refused(client, db, sign):
    response = client.post(SMS, data=urlencode({**STOP, "Body": "START"}),
                           content_type="application/x-www-form-urlencoded",
                           headers={"X-Twilio-Signature": sign(SMS, STOP)})
    assert response.status_code == 403
    assert _stored(db) == (0, 0, 0, 0)


def test_a_query_string_added_after_signing_is_refused(client, db, sign):
    response = client.post(f"{SMS}?debug=1", data=urlencode(STOP), content_type="application/x-www-form-urlencoded",
                           headers={"X-Twilio-Signature": sign(SMS, STOP)})
    assert response.status_code == 403


def test_the_status_callback_is_signed_too(client):
    before = _rejected("/webhooks/twilio/status")
    response = client.post("/webhooks/twilio/status",
                           data={"MessageSid": "SM" + "2" * 32, "MessageStatus": "delivered"})
    assert response.status_code == 403
    assert _rejected("/webhooks/twilio/status") == before + 1


def test_the_sandbox_token_validates_nothing_with_the_sandbox_off(settings, db):
    """The sandbox's token is published: with the sandbox off, a webhook signed with it is refused,
    even by an app whose settings did not go through load_settings (which refuses that token)."""
    assert settings.twilio_auth_token == SANDBOX_AUTH_TOKEN
    sandbox_off = create_app(dataclasses.replace(settings, sandbox=False, twilio_api_base_url=None))
    signature = RequestValidator(SANDBOX_AUTH_TOKEN).compute_signature(settings.public_url(SMS), STOP)
    try:
        response = sandbox_off.test_client().post(SMS, data=urlencode(STOP), headers={"X-Twilio-Signature": signature},
                                                  content_type="application/x-www-form-urlencoded")
    finally:
        sandbox_off.extensions["gateway"].db.dispose()
    assert response.status_code == 403
    assert _stored(db) == (0, 0, 0, 0)


@pytest.fixture(scope="module")
def rotated(test_env, app):
    """The app during a token rotation: a new token, the old ones still accepted."""
    rotated_app = create_app(load_settings(env={
        **test_env, **REAL_TWILIO_ENV, "TWILIO_AUTH_TOKEN": "new-token",
        "TWILIO_AUTH_TOKENS_PREVIOUS": f"{REAL_AUTH_TOKEN},older-token"}))
    yield rotated_app.test_client()
    rotated_app.extensions["gateway"].db.dispose()


@pytest.mark.parametrize("token", ["new-token", REAL_AUTH_TOKEN, "older-token"])
def test_every_token_of_a_rotation_is_accepted(rotated, settings, db, token):
    params = {**STOP, "MessageSid": "SM" + hashlib.md5(token.encode()).hexdigest()}
    signature = RequestValidator(token).compute_signature(settings.public_url(SMS), params)
    response = rotated.post(SMS, data=urlencode(params), content_type="application/x-www-form-urlencoded",
                            headers={"X-Twilio-Signature": signature})
    assert response.status_code == 200
    assert _stored(db)[0] == 1


def test_a_token_outside_the_rotation_is_refused(rotated, settings, db):
    signature = RequestValidator("someone-elses-token").compute_signature(settings.public_url(SMS), STOP)
    response = rotated.post(SMS, data=urlencode(STOP), content_type="application/x-www-form-urlencoded",
                            headers={"X-Twilio-Signature": signature})
    assert response.status_code == 403
    assert _stored(db) == (0, 0, 0, 0)
