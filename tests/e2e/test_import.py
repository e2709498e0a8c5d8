"""A bulk import uploaded over real HTTP and run by the real worker process."""

import pytest
import requests
from sqlalchemy import func, select

from gateway.services import keys
from gateway.store import ledger
from gateway.store.models import LedgerEvent
from tests.conftest import wait_for


@pytest.mark.e2e
def test_an_uploaded_import_is_run_by_the_worker(worker_process, live_server, db):
    with db.transaction() as session:
        _, key = keys.create(session, "e2e-import", ["admin"])
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "text/csv"}

    def body():  # streamed, chunked: the server never sees a Content-Length
        yield b"phone,program,status,source\n"
        for i in range(500):
            yield f"+1415{3_000_000 + i:07d},{'alerts' if i % 2 else 'deals'},opted_in,e2e\n".encode()
        yield b"+14153000000,deals,opted_in,again\n"

    answer = requests.post(f"{live_server}/v1/consents/import", data=body(), headers=headers, timeout=60)
    assert answer.status_code == 202, answer.text
    location = live_server + answer.headers["Location"]

    def done():
        return requests.get(location, headers=headers, timeout=10).json()["status"] == "done"

    wait_for(done, timeout=120)
    state = requests.get(location, headers=headers, timeout=10).json()
    assert (state["applied"], state["refused"], state["line_done"]) == (500, 1, 502)
    results = requests.get(location + "/results", headers=headers, timeout=10).text.splitlines()
    assert results[-1] == "502,refused,import_opt_in is not allowed from opted_in"
    with db.snapshot() as session:
        assert session.scalar(select(func.count()).select_from(LedgerEvent)) == 500
        assert list(ledger.verify(session)) == []
