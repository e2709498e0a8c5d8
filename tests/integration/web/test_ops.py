"""Health, readiness, metrics, and the rule that every route declares its auth."""

from flask import Blueprint

from gateway.web.auth import declared_auth


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_checks_database_and_broker(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"status": "ready"}


def test_readyz_names_what_is_unreachable(client, gateway, monkeypatch):
    def refuse(*args, **kwargs):
        raise ConnectionError("no broker")

    monkeypatch.setattr(gateway.dispatcher, "ping", refuse)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "failed": ["broker"]}


def test_readyz_names_an_unreachable_database(client, gateway, monkeypatch):
    def refuse():
        raise ConnectionError("no database")

    monkeypatch.setattr(gateway.db, "ping", refuse)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["failed"] == ["database"]


def test_metrics_are_prometheus_text(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    assert b"smsgate_webhook_rejected_total" in response.data


def test_every_route_declares_its_auth(app):
    undeclared = [
        rule.rule for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and declared_auth(app.view_functions[rule.endpoint]) is None
    ]
    assert undeclared == []


def test_a_route_without_declared_auth_is_refused(settings):
    from gateway.web.app import create_app

    app = create_app(settings)
    bp = Blueprint("forgot_auth", __name__)

    @bp.get("/forgot-auth")
    def forgot():
        return "should never be served"

    app.register_blueprint(bp)
    response = app.test_client().get("/forgot-auth")
    assert response.status_code == 403
    assert b"should never" not in response.data
    app.extensions["gateway"].db.dispose()
