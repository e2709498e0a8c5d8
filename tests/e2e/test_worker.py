"""A real Celery worker process runs tasks sent by the web side, inside the app context."""

from datetime import timedelta

import pytest
from sqlalchemy import select

from gateway.domain.consent import Input, Source
from gateway.domain.numbers import parse
from gateway.queue.app import TaskNames
from gateway.services import consents
from gateway.store import consents as store_consents
from gateway.store.models import Consent, utcnow
from gateway.store.programs import by_slug
from tests.conftest import wait_for


@pytest.mark.e2e
def test_worker_expires_overdue_requests(worker_process, db, gateway):
    past = utcnow() - timedelta(hours=49)
    with db.transaction() as session:
        row = store_consents.number_row(session, parse("+14155552671"))
        consents.apply(session, row, by_slug(session, "deals"), Input.API_REQUEST,
                      consents.Evidence(Source.API), now=past, expires_at=past + timedelta(hours=48))
    gateway.dispatcher.send(TaskNames.EXPIRE_PENDING)

    def expired():
        with db.sessions() as session:
            return session.scalar(select(Consent.status)) == "expired"

    wait_for(expired)
