"""A WSGI app that fails every request, for the test of what gunicorn's error log prints then."""


def app(environ, start_response):
    raise RuntimeError("no consent for (415) 555-0149")
