"""The pages for people: the sandbox build's start page and the API reference rendered from /openapi.json."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from gateway.web.headers import CONTENT_SECURITY_POLICY


class Links(HTMLParser):
    """Every href and src of a page, and whether it has a script."""

    def __init__(self):
        super().__init__()
        self.hrefs, self.sources, self.scripts = [], [], 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "href" in attributes:
            self.hrefs.append(attributes["href"])
        if "src" in attributes:
            self.sources.append(attributes["src"])
        self.scripts += tag == "script"


def parsed(html: str) -> Links:
    links = Links()
    links.feed(html)
    return links


def test_the_start_page_links_the_phone_every_form_the_docs_and_the_metrics(client):
    page = client.get("/")
    assert page.status_code == 200
    hrefs = parsed(page.get_data(as_text=True)).hrefs
    for wanted in ("/sandbox/phone", "/subscribe/alerts", "/subscribe/deals", "/subscribe/orders", "/docs/api",
                   "/openapi.json", "/metrics"):
        assert wanted in hrefs, wanted
    assert "between 08:00 and\n    21:00 at the recipient" in page.get_data(as_text=True)
    for href in hrefs:
        assert href.startswith("/"), href  # nothing leads off the gateway
        assert client.get(href).status_code == 200, href


def test_without_the_sandbox_there_is_no_start_page(settings):
    from dataclasses import replace

    from gateway.web.app import create_app

    production = create_app(replace(settings, sandbox=False))
    try:
        client = production.test_client()
        assert client.get("/").status_code == 404
        assert client.get("/docs/api").status_code == 200  # the reference is as public as /openapi.json
    finally:
        production.extensions["gateway"].db.dispose()


def test_the_api_reference_lists_every_path_and_method_of_the_openapi_document(client):
    document = client.get("/openapi.json").get_json()
    page = client.get("/docs/api")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    listed = set(re.findall(r'<h3 id="[^"]+"><span class="method">(\w+)</span> <code>([^<]+)</code></h3>', html))
    expected = {(method, path) for path, methods in document["paths"].items() for method in methods}
    assert listed == expected and len(expected) >= 8
    for name in document["components"]["schemas"]:
        assert f'id="schema-{name}"' in html
    anchors = set(re.findall(r'id="([^"]+)"', html))
    for href in parsed(html).hrefs:
        if href.startswith("#"):
            assert href[1:] in anchors, href  # every link inside the page lands somewhere


def test_the_api_reference_loads_nothing_from_elsewhere(client):
    page = client.get("/docs/api")
    html = page.get_data(as_text=True)
    links = parsed(html)
    assert links.scripts == 0 and links.sources == []
    assert not [href for href in links.hrefs if re.match(r"(https?:)?//", href)]
    assert not re.search(r"@import|url\(", html)
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    start = client.get("/")
    assert not re.search(r"https?://", start.get_data(as_text=True))
    assert start.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_the_api_reference_escapes_what_it_renders(client):
    html = client.get("/docs/api").get_data(as_text=True)
    assert "<code>code</code>" in html  # `code` in a description shows as code
    assert "{&#34;error&#34;" in html or "{&quot;error&quot;" in html  # the error shape's JSON, escaped
