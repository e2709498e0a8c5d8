"""POST /v1/consents/import: a streamed upload kept in parts, queued for the worker; its state and results."""

import io

from sqlalchemy import func, select

from gateway.queue.app import TaskNames
from gateway.services import imports
from gateway.store.models import Import, ImportPart, PhoneNumber


def _admin(make_key):
    return {"Authorization": f"Bearer {make_key('admin')}"}


def test_an_upload_is_queued_run_by_the_worker_and_reports_each_row(client, make_key, db, gateway, captured_queue,
                                                                   monkeypatch):
    monkeypatch.setattr(imports, "PART_BYTES", 64)  # several parts, lines running across them
    headers = _admin(make_key)
    body = ("phone,program,status,note\r\n" + "".join(f"+1415555{i:04d},deals,opted_in,\"row, {i}\"\r\n"
                                                   for i in range(40))
            + "nope,deals,opted_in,x\r\n" + "+14155550999,deals,opted_in,a\x00b\r\n")
    answer = client.post("/v1/consents/import?name=crm.csv", data=io.BytesIO(body.encode()), headers=headers,
                         content_type="text/csv")
    assert answer.status_code == 202, answer.get_json()
    state = answer.get_json()
    assert state["status"] == "queued" and state["name"] == "crm.csv" and state["total_lines"] == 43
    assert answer.headers["Location"] == f"/v1/consents/import/{state['id']}"
    [(queue, message)] = captured_queue.messages()
    assert message.headers["task"] == TaskNames.RUN_IMPORT and message.payload[0] == [state["id"]]
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ImportPart)) > 5
    # What the worker's task does:
    imports.run_uploaded(db, state["id"], region="US", suppression_key=gateway.settings.suppression_key,
                         rules=gateway.quiet_hours)
    done = client.get(f"/v1/consents/import/{state['id']}", headers=headers).get_json()
    assert (done["status"], done["line_done"], done["applied"], done["refused"]) == ("done", 43, 40, 2)
    results = client.get(f"/v1/consents/import/{state['id']}/results", headers=headers)
    assert results.mimetype == "text/csv"
    lines = results.get_data(as_text=True).splitlines()
    assert lines[0] == "line,result,reason" and lines[1] == "2,imported," and len(lines) == 43
    assert lines[-2] == "42,refused,invalid number (not_a_number)"
    assert lines[-1] == "43,refused,\"column 'note' contains a NUL character (U+0000), which cannot be stored\""
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(PhoneNumber)) == 40
        assert session.scalar(select(func.count()).select_from(ImportPart)) == 0  # not kept twice
    assert [row["id"] for row in client.get("/v1/consents/import", headers=headers).get_json()["imports"]] \
        == [state["id"]]


def test_an_upload_refused_whole_keeps_nothing(client, make_key, db, captured_queue):
    headers = _admin(make_key)
    for body, why in ((b"phone,program\n+14155550001,deals\n", "lacks the column(s): status"),
                      ("phone,program,status\n+14155550001,deals,opted_in,Ren\xe9e\n".encode("latin-1"), "UTF-8")):
        answer = client.post("/v1/consents/import", data=body, headers=headers, content_type="text/csv")
        assert answer.status_code == 422 and answer.get_json()["error"]["code"] == "invalid_file"
        assert why in answer.get_json()["error"]["message"]
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Import)) == 0
        assert session.scalar(select(func.count()).select_from(ImportPart)) == 0
    assert captured_queue.messages() == []


def test_imports_need_the_admin_scope_and_unknown_ones_are_404(client, make_key):
    reader = {"Authorization": f"Bearer {make_key('read', 'subscribe')}"}
    assert client.post("/v1/consents/import", data=b"phone,program,status\n", headers=reader).status_code == 403
    assert client.get("/v1/consents/import/imp_00000000000000000000000000000000", headers=reader).status_code == 403
    admin, unknown = _admin(make_key), "/v1/consents/import/imp_" + "0" * 32
    assert client.get(unknown, headers=admin).status_code == 404
    assert client.get(unknown + "/results", headers=admin).status_code == 404
