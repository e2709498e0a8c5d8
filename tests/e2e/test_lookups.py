"""End to end with a real Celery worker (and its beat) that has look-ups on: a message to a sandbox
landline is refused after the look-up, and the daily job ends a deactivated number's consents."""

import pytest
from sqlalchemy import select

from gateway.store.models import LedgerEvent, PhoneNumber
from tests.conftest import WorkerProcess, _free_port, wait_for
from tests.e2e.test_outbound import at_provider, opted_in, restart
from tests.sandbox_support import message_row, quick_sandbox  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e


@pytest.fixture
def looking_worker(app, live_server, test_env, tmp_path, worker_process):
    """A worker with look-ups on and the Deactivations job every second; the session's worker is
    stopped meanwhile, so no task of this test reaches a worker without them."""
    worker_process.stop()
    worker = WorkerProcess({**test_env, "LOOKUP_LINE_TYPE": "on", "DEACTIVATIONS_CHECK_SECONDS": "1",
                            "DEACTIVATIONS_DAYS_BACK": "2", "WORKER_METRICS_PORT": str(_free_port())},
                           tmp_path / "looking-worker.log", "--beat", "-s", str(tmp_path / "beat-schedule"))
    worker.start()
    yield worker
    worker.stop()
    restart(worker_process)


@pytest.fixture
def headers(make_key):
    return {"Authorization": f"Bearer {make_key('send', 'read')}"}


def events(db, phone: str) -> list[LedgerEvent]:
    with db.sessions() as session:
        number = session.scalars(select(PhoneNumber).where(PhoneNumber.e164 == phone)).one()
        return list(session.scalars(select(LedgerEvent).where(LedgerEvent.number_id == number.id)
                                    .order_by(LedgerEvent.seq)))


def test_a_landline_is_refused_after_the_lookup_and_a_deactivated_number_ends_on_the_daily_job(
        looking_worker, client, headers, db, quick_sandbox):
    landline, mobile, deactivated = "+14155550111", "+14155550110", "+14155550114"
    opted_in(db, "orders", landline, mobile, deactivated)
    sent = {phone: client.post("/v1/messages", headers=headers,
                               json={"to": phone, "program": "orders", "body": "Your order shipped"})
            for phone in (landline, mobile)}
    assert {phone: r.status_code for phone, r in sent.items()} == {landline: 202, mobile: 202}
    refused = wait_for(lambda: (m := message_row(db, sent[landline].json["id"])).status == "blocked" and m,
                       timeout=60, what="the landline's message is refused")
    assert refused.reason == "landline"
    assert at_provider(db, to=landline) == []
    assert events(db, landline)[-1].evidence["verdict"] == "landline"
    wait_for(lambda: message_row(db, sent[mobile].json["id"]).status in ("sent", "delivered"), timeout=60,
             what="the mobile's message is sent")
    # Beat's Deactivations job, run by the worker: the deactivated number's consent ends.
    ended = wait_for(lambda: [e for e in events(db, deactivated) if e.input == "carrier_deactivation"],
                     timeout=60, what="the deactivated number's consent ends")
    assert ended[0].evidence["reason"] == "carrier deactivation"
    assert ended[0].evidence["verdict"] == "deactivated"
    assert [e.input for e in events(db, mobile)].count("carrier_deactivation") == 0
