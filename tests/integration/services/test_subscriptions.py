"""Double opt-in at the core, on a fixed clock: requests, confirmation texts, YES, expiry, limits."""

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from gateway.config import ConfigError, load_settings
from gateway.domain.consent import IllegalTransition, Input, Source, Status
from gateway.domain.gate import Reason
from gateway.domain.numbers import parse
from gateway.domain.programs import DEFAULT_TEMPLATES, ProgramSpec, spec_of
from gateway.queue.ratelimit import Limiter
from gateway.services import abuse, consents, expiry, inbound, sending, subscriptions
from gateway.store import consents as store_consents
from gateway.store import programs
from gateway.store.models import Consent, LedgerEvent, OutboundMessage, PhoneNumber
from gateway.store.programs import by_slug

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
TTL = timedelta(hours=48)
PHONE = "+14155550121"
DEALS_SENDER = "+15005550006"
API = consents.Evidence(Source.API, actor="crm", reference="req_1", details={"client_evidence": {"ip": "203.0.113.7"}})
KEY = b"k" * 32  # names the counters of a limiter made in a test
YES = consents.Evidence(Source.SMS, actor="twilio", reference="SM" + "b" * 32, details={"body": "YES"})


@pytest.fixture(autouse=True)
def _fresh_limits(gateway):
    gateway.limiter.reset()


def start(gateway, slug="deals", phone=PHONE, input=Input.API_REQUEST, now=NOW, guard=None, evidence=API):
    with gateway.db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        started = subscriptions.start(
            session, number=row, program=by_slug(session, slug), input=input, evidence=evidence, now=now, ttl=TTL,
            suppression_key=gateway.settings.suppression_key, rules=gateway.quiet_hours, guard=guard)
        return started.status, started.expires_at, started.confirmation.id if started.confirmation else None, \
            started.refused


def request(gateway, slug="deals", phone=PHONE, guard=None, now=NOW):
    with gateway.db.transaction() as session:
        program, started = subscriptions.request(
            session, number=parse(phone), program_slug=slug, input=Input.WEB_REQUEST, evidence=API, now=now, ttl=TTL,
            suppression_key=gateway.settings.suppression_key, rules=gateway.quiet_hours, guard=guard)
        return started.status


def confirm(gateway, phone=PHONE, sender=DEALS_SENDER, now=NOW):
    """The person texts YES to `sender`: (program, before, after) of each consent it confirmed."""
    sid = f"SM{next(_SIDS):032x}"
    inbound.handle(gateway, inbound.InboundText(sid, phone, sender, "YES"), now=now)
    with gateway.db.sessions() as session:
        return [tuple(row) for row in session.execute(
            select(programs.Program.slug, LedgerEvent.status_before, LedgerEvent.status_after)
            .join(programs.Program, programs.Program.id == LedgerEvent.program_id)
            .where(LedgerEvent.reference == sid, LedgerEvent.type == "confirmation").order_by(LedgerEvent.seq))]


_SIDS = itertools.count(1)


def apply(gateway, slug, input, phone=PHONE, now=NOW):
    with gateway.db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        consents.apply(session, row, by_slug(session, slug), input, YES, now=now)


def statuses(db):
    with db.sessions() as session:
        return {(e164, slug): status for e164, slug, status in session.execute(
            select(PhoneNumber.e164, programs.Program.slug, Consent.status)
            .join(Consent, Consent.number_id == PhoneNumber.id).join(programs.Program))}


def counts(db):
    """(numbers, ledger events, messages): what a refused request must leave untouched."""
    with db.sessions() as session:
        return tuple(session.scalar(select(func.count()).select_from(t)) for t in (PhoneNumber, LedgerEvent,
                                                                                    OutboundMessage))


def messages(db):
    with db.sessions() as session:
        return session.execute(select(OutboundMessage.kind, OutboundMessage.status, OutboundMessage.body,
                                      OutboundMessage.sender).order_by(OutboundMessage.created_at)).all()


def test_request_records_pending_with_evidence_and_queues_the_confirmation_text(gateway, db):
    status, expires_at, message_id, refused = start(gateway)
    assert (status, expires_at, refused) == (Status.PENDING, NOW + TTL, None)
    with db.sessions() as session:
        event = session.scalars(select(LedgerEvent)).one()
        message = session.get(OutboundMessage, message_id)
        program = by_slug(session, "deals")
        text = spec_of(program).text("confirmation")
        assert (event.type, event.input, event.source, event.actor, event.reference) == (
            "request", "api_request", "api", "crm", "req_1")
        assert event.evidence == {"client_evidence": {"ip": "203.0.113.7"}, "confirmation_text": text,
                                  "program_version": program.version}
        assert event.expires_at == NOW + TTL
        # The same outbox as every message: a queued row of kind confirmation, from the program's sender.
        assert (message.kind, message.status, message.body, message.sender) == (
            "confirmation", "queued", text, DEALS_SENDER)
    assert "Acme Deals" in text and "YES" in text and "STOP" in text and "Msg & data rates may apply" in text


def test_yes_confirms_a_live_request_on_that_sender_only(gateway, db):
    start(gateway, "deals")
    assert confirm(gateway, sender="+18885550199") == []  # another sender's YES confirms nothing here
    assert confirm(gateway, now=NOW + TTL - timedelta(seconds=1)) == [("deals", "pending", "opted_in")]
    assert statuses(db) == {(PHONE, "deals"): "opted_in"}


def test_yes_confirms_every_pending_program_on_the_sender(gateway, db):
    start(gateway, "deals")
    start(gateway, "alerts")
    assert sorted(confirm(gateway)) == [("alerts", "pending", "opted_in"), ("deals", "pending", "opted_in")]


def test_an_expired_request_cannot_be_confirmed(gateway, db):
    start(gateway)
    # Past the deadline, before the beat task ran: YES still confirms nothing.
    assert confirm(gateway, now=NOW + TTL) == []
    assert statuses(db) == {(PHONE, "deals"): "pending"}
    with db.transaction() as session:
        assert expiry.expire_pending(session, now=NOW + TTL) == 1
    assert confirm(gateway, now=NOW + TTL + timedelta(minutes=1)) == []
    assert statuses(db) == {(PHONE, "deals"): "expired"}


def test_yes_with_nothing_pending_creates_no_consent(gateway, db):
    assert confirm(gateway) == []
    assert statuses(db) == {}
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(LedgerEvent)) == 0


def test_an_expired_request_can_be_asked_again(gateway, db):
    start(gateway)
    with db.transaction() as session:
        expiry.expire_pending(session, now=NOW + TTL)
    later = NOW + timedelta(days=3)
    status, expires_at, message_id, _ = start(gateway, now=later)
    assert (status, expires_at, message_id is not None) == (Status.PENDING, later + TTL, True)
    assert confirm(gateway, now=later + timedelta(hours=1)) == [("deals", "pending", "opted_in")]


def test_asking_again_while_pending_sends_a_new_text_and_extends_the_deadline(gateway, db):
    first = start(gateway)
    second = start(gateway, now=NOW + timedelta(hours=1))
    assert second[1] == NOW + timedelta(hours=49)
    assert first[2] != second[2]
    assert [m.kind for m in messages(db)] == ["confirmation", "confirmation"]


def test_a_confirmed_number_is_never_downgraded_or_texted_again(gateway, db):
    start(gateway)
    confirm(gateway)
    before = counts(db)
    limiter = Limiter(None)
    guard = abuse.Guard(limiter, abuse.ConfirmationLimits("1 per day", "1 per day", "1 per day"), KEY,
                        client="198.51.100.1")
    for input in (Input.API_REQUEST, Input.WEB_REQUEST, Input.KEYWORD_JOIN):
        assert start(gateway, input=input, guard=guard)[:3] == (Status.OPTED_IN, None, None)
    assert counts(db) == before
    assert statuses(db) == {(PHONE, "deals"): "opted_in"}
    assert limiter.test("1 per day", "confirm", "number", abuse.pseudonym(KEY, "number", PHONE))  # no slot taken


@pytest.mark.parametrize("input", [Input.API_REQUEST, Input.WEB_REQUEST])
@pytest.mark.parametrize("opt_out", [Input.KEYWORD_STOP, Input.CARRIER_OPT_OUT, Input.API_OPT_OUT])
def test_a_business_cannot_ask_someone_who_opted_out(gateway, db, input, opt_out):
    apply(gateway, "deals", opt_out)
    before = counts(db)
    with pytest.raises(IllegalTransition):
        start(gateway, input=input)
    assert counts(db) == before
    with pytest.raises(subscriptions.Refused) as refused:
        request(gateway)
    assert refused.value.code == "opted_out"
    assert "DEALS" in refused.value.message and DEALS_SENDER in refused.value.message
    assert counts(db) == before


def test_the_person_may_come_back_by_texting_the_join_keyword(gateway, db):
    apply(gateway, "deals", Input.KEYWORD_STOP)
    status, _, message_id, _ = start(gateway, input=Input.KEYWORD_JOIN,
                                     evidence=consents.Evidence(Source.SMS, "twilio", "SM" + "c" * 32))
    assert status is Status.PENDING and message_id is not None


def test_single_opt_in_programs_still_need_yes_for_web_and_api_requests(gateway, db):
    assert request(gateway, "orders") is Status.PENDING
    status, *_ = start(gateway, "orders", phone="+14155550122", input=Input.KEYWORD_JOIN,
                       evidence=consents.Evidence(Source.SMS, "twilio", "SM" + "d" * 32))
    assert status is Status.OPTED_IN  # texted from the handset: possession is proven


def test_a_country_outside_the_allowlist_is_refused_and_nothing_is_recorded(gateway, db):
    with pytest.raises(subscriptions.Refused) as refused:
        request(gateway, phone="+16045550123")
    assert (refused.value.code, refused.value.extra["allowed_countries"]) == ("country_not_allowed", ["US"])
    assert counts(db) == (0, 0, 0)
    assert start(gateway, phone="+16045550123")[3] == Reason.COUNTRY_NOT_ALLOWED
    assert counts(db) == (1, 0, 0)  # the number row the helper made; no event, no text


def test_a_suppressed_number_is_refused_as_suppressed(gateway, db):
    with db.transaction() as session:
        consents.suppress(session, gateway.settings.suppression_key, PHONE, "erased_after_opt_out")
    with pytest.raises(subscriptions.Refused) as refused:
        request(gateway)
    assert refused.value.code == "suppressed"
    assert counts(db) == (0, 0, 0)


def test_a_suppressed_number_is_refused_whatever_its_consents_say(gateway, db):
    """Opted out, erased, then opted in again by other means (an import, a single opt-in keyword):
    the suppression still wins, and no request changes anything."""
    apply(gateway, "deals", Input.KEYWORD_STOP)
    with db.transaction() as session:
        from gateway.services import privacy  # noqa: PLC0415

        privacy.erase(session, store_consents.find_number(session, PHONE), gateway.settings.suppression_key,
                      consents.Evidence(Source.API, actor="admin"))
    apply(gateway, "deals", Input.IMPORT_OPT_IN)
    before = counts(db)
    with pytest.raises(subscriptions.Refused) as refused:
        request(gateway)
    assert refused.value.code == "suppressed"
    assert counts(db) == before


@pytest.mark.parametrize("reachability, code", [("landline", "not_mobile"), ("unreachable", "invalid_number")])
def test_numbers_known_not_to_take_texts_are_refused(gateway, db, reachability, code):
    with db.transaction() as session:
        store_consents.number_row(session, parse(PHONE)).reachability = reachability
    before = counts(db)
    with pytest.raises(subscriptions.Refused) as refused:
        request(gateway)
    assert refused.value.code == code
    assert counts(db) == before


def test_fixed_lines_and_unknown_programs_are_refused(gateway, db):
    with pytest.raises(subscriptions.Refused) as refused:
        request(gateway, phone="+442079460000")
    assert refused.value.code == "not_mobile"
    with pytest.raises(subscriptions.Refused) as refused:
        request(gateway, slug="nope")
    assert refused.value.code == "unknown_program"
    assert counts(db) == (0, 0, 0)


def guard(gateway, client="198.51.100.1", per_number="3 per 24 hours", per_client="10 per hour",
          per_program="1000 per hour", **more):
    return abuse.Guard(gateway.limiter, abuse.ConfirmationLimits(per_number, per_client, per_program),
                       abuse.pseudonym_key(gateway.settings.suppression_key), client=client, **more)


def slot_free(gateway, scope, value, rule):
    key = abuse.pseudonym_key(gateway.settings.suppression_key)
    return gateway.limiter.test(rule, "confirm", scope, abuse.pseudonym(key, scope, value))


def test_confirmation_texts_per_number_are_limited_across_programs(gateway, db):
    assert start(gateway, "deals", guard=guard(gateway))[0] is Status.PENDING
    assert start(gateway, "alerts", guard=guard(gateway, client="198.51.100.2"))[0] is Status.PENDING
    assert start(gateway, "deals", guard=guard(gateway, client="198.51.100.3"))[0] is Status.PENDING
    before = counts(db)
    with pytest.raises(abuse.RateLimited) as limited:
        start(gateway, "alerts", guard=guard(gateway, client="198.51.100.4"))
    assert limited.value.scope == "number"
    assert 0 < limited.value.retry_after <= 24 * 3600
    assert counts(db) == before  # nothing recorded, nothing sent


def test_confirmation_texts_per_client_and_per_program_are_limited(gateway, db):
    small = dict(per_client="2 per hour", per_program="3 per hour")
    start(gateway, phone="+14155550111", guard=guard(gateway, **small))
    start(gateway, phone="+14155550112", guard=guard(gateway, **small))
    with pytest.raises(abuse.RateLimited) as limited:
        start(gateway, phone="+14155550113", guard=guard(gateway, **small))
    assert limited.value.scope == "client"
    start(gateway, phone="+14155550114", guard=guard(gateway, client="198.51.100.9", **small))
    with pytest.raises(abuse.RateLimited) as limited:
        start(gateway, phone="+14155550115", guard=guard(gateway, client="198.51.100.10", **small))
    assert limited.value.scope == "program"
    assert start(gateway, "alerts", phone="+14155550115", guard=guard(gateway, client="198.51.100.10", **small))[0] \
        is Status.PENDING  # the limit is per program
    # A refused request took no slot on the other limits: the victim number's owner is not locked out.
    assert slot_free(gateway, "number", "+14155550113", "3 per 24 hours")
    assert [m.kind for m in messages(db)] == ["confirmation"] * 4


def test_the_worker_gates_the_confirmation_text_again(gateway, db):
    """Between request and worker, a STOP (or the deadline) wins: the text is blocked, not sent. The
    STOP blocks it in its own write; the deadline is the worker's gate's to find."""
    _, _, stopped, _ = start(gateway)
    apply(gateway, "deals", Input.KEYWORD_STOP)
    _, _, overdue, _ = start(gateway, "alerts", phone="+14155550122")
    assert sending.send(gateway, stopped, now=NOW + timedelta(minutes=1)) == sending.SKIPPED
    assert sending.send(gateway, overdue, now=NOW + TTL).reason == "no_pending_request"
    assert [m.status for m in messages(db)] == ["blocked", "blocked"]
    with db.sessions() as session:
        assert [session.get(OutboundMessage, i).reason for i in (stopped, overdue)] == ["opted_out",
                                                                                       "no_pending_request"]


def test_the_disclosure_says_who_what_how_often_rates_stop_help_and_links(gateway, db):
    with db.sessions() as session:
        spec = spec_of(by_slug(session, "deals"))
    shown = subscriptions.disclosure(spec)
    for must in ("Acme Deals", "marketing text messages", "Up to 4 msgs/month.", "Msg & data rates may apply.",
                 "Reply STOP to cancel", "HELP for help", "Consent is not a condition of purchase.",
                 "Terms: https://acme.example/terms", "Privacy: https://acme.example/privacy", "reply YES"):
        assert must in shown.text
    assert "Acme Deals" in shown.label
    assert shown.version == subscriptions.disclosure(spec).version  # stable for the same wording
    reworded = ProgramSpec(**{**spec.__dict__, "frequency": "Up to 8 msgs/month"})
    assert subscriptions.disclosure(reworded).version != shown.version


def test_the_limits_are_settings_and_a_malformed_one_stops_start_up(test_env):
    settings = load_settings(env={**test_env, "CONFIRMATION_LIMIT_PER_NUMBER": "2 per 12 hours"})
    assert abuse.ConfirmationLimits.from_settings(settings) == abuse.ConfirmationLimits(
        "2 per 12 hours", "10 per hour", "1000 per hour")
    with pytest.raises(ConfigError, match="CONFIRMATION_LIMIT_PER_CLIENT"):
        load_settings(env={**test_env, "CONFIRMATION_LIMIT_PER_CLIENT": "lots"})


def test_a_request_the_store_refuses_takes_no_slot(gateway, db):
    """A slot is taken only once the text is queued and the store has taken every write: evidence it
    cannot hold fails the request, and the number and the client keep their allowance."""
    unstorable = consents.Evidence(Source.API, actor="crm", reference="req_2",
                                  details={"client_evidence": {"note": "\ud800"}})
    one = dict(per_number="1 per hour", per_client="1 per hour")
    with pytest.raises(Exception):  # noqa: B017  (what the driver raises differs between backends)
        start(gateway, guard=guard(gateway, **one), evidence=unstorable)
    assert counts(db) == (0, 0, 0)
    assert slot_free(gateway, "number", PHONE, "1 per hour")
    assert slot_free(gateway, "client", "198.51.100.1", "1 per hour")
    assert start(gateway, guard=guard(gateway, **one))[0] is Status.PENDING


def test_our_own_senders_cannot_be_subscribed(gateway, db):
    """Any program's sender, and the numbers listed for a Messaging Service program."""
    service_program = ProgramSpec(
        slug="hub", name="Acme Hub", category="informational", frequency="Msg frequency varies",
        help="Acme Hub: help at acme.example/help. Reply STOP to cancel.", messaging_service="MG" + "a" * 32,
        service_numbers=("+14155550199",), templates=dict(DEFAULT_TEMPLATES))
    with db.transaction() as session:
        programs.store(session, [service_program])
    for own in ("+15005550006", "+18885550199", "+14155550199"):
        with pytest.raises(subscriptions.Refused) as refused:
            request(gateway, "deals", phone=own)
        assert refused.value.code == "own_sender"
    assert counts(db) == (0, 0, 0)


@pytest.mark.parametrize("address, counted", [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("testclient", "testclient"),
])
def test_clients_are_counted_by_address_and_ipv6_by_network(address, counted):
    assert abuse.client_of(address, 64) == counted


def test_an_ipv6_client_cannot_dodge_the_limit_by_rotating_within_its_network(gateway, db):
    small = dict(per_client="2 per hour")
    start(gateway, phone="+14155550111", guard=guard(gateway, client="2001:db8:1:2::1", **small))
    start(gateway, phone="+14155550112", guard=guard(gateway, client="2001:db8:1:2::2", **small))
    with pytest.raises(abuse.RateLimited) as limited:
        start(gateway, phone="+14155550113", guard=guard(gateway, client="2001:db8:1:2:ffff::9", **small))
    assert limited.value.scope == "client"
    # Another network has its own allowance.
    assert start(gateway, phone="+14155550113", guard=guard(gateway, client="2001:db8:1:3::1", **small))[0] \
        is Status.PENDING


def test_the_ipv6_prefix_is_a_setting(gateway, db, test_env):
    settings = load_settings(env={**test_env, "CONFIRMATION_CLIENT_IPV6_PREFIX": "48"})
    limits = abuse.ConfirmationLimits.from_settings(settings)
    assert limits.ipv6_prefix == 48
    key = abuse.pseudonym_key(settings.suppression_key)
    wide = [abuse.Guard(gateway.limiter, dataclasses.replace(limits, per_client="2 per hour"), key, client=client)
            for client in ("2001:db8:9:1::1", "2001:db8:9:2::1", "2001:db8:9:3::1")]  # one /48, three /64s
    start(gateway, phone="+14155550111", guard=wide[0])
    start(gateway, phone="+14155550112", guard=wide[1])
    with pytest.raises(abuse.RateLimited) as limited:
        start(gateway, phone="+14155550113", guard=wide[2])
    assert limited.value.scope == "client"
    for wrong in ("0", "129", "sixty-four"):
        with pytest.raises(ConfigError, match="CONFIRMATION_CLIENT_IPV6_PREFIX"):
            load_settings(env={**test_env, "CONFIRMATION_CLIENT_IPV6_PREFIX": wrong})
    with pytest.raises(ConfigError, match="CONFIRMATION_LIMIT_PER_KEY"):
        load_settings(env={**test_env, "CONFIRMATION_LIMIT_PER_KEY": "many"})


def stored_counter_names(gateway) -> list[str]:
    """Every key the limiter's storage holds: the real Redis keys (REDIS_URL), or the in-process ones."""
    if gateway.settings.redis_url:
        import redis  # noqa: PLC0415

        return [key.decode() for key in redis.Redis.from_url(gateway.settings.redis_url).keys("*")]
    return [*gateway.limiter.storage.events, *gateway.limiter.storage.storage]


def test_the_counters_hold_no_number_and_no_address(gateway, db):
    """Rate-limit keys outlive a request by a day (and an erasure): they are keyed hashes."""
    start(gateway, phone="+14155550147", guard=guard(gateway, client="198.51.100.77", api_key="41"))
    start(gateway, "alerts", phone="+14155550147",
          guard=guard(gateway, client="2001:db8:77:5::1", api_key="41"))
    names = [name for name in stored_counter_names(gateway) if "confirm" in name]
    assert len(names) >= 5  # number, two clients, key, two programs
    for name in names:
        for secret in ("4155550147", "5550147", "198.51.100.77", "2001:db8:77", "2001_db8"):
            assert secret not in name
