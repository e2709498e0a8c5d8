"""A WSGI app that answers how many objects its process has moved out of the collector's reach
(gc.freeze), for the test that gunicorn's workers freeze what they loaded."""

import gc


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(gc.get_freeze_count()).encode()]
