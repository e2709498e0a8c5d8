"""The Provider on the official twilio client: sends, fetches and lists, every outcome in our terms.

The client is pointed at TWILIO_API_BASE_URL (the sandbox, in development and tests) through its
documented `http_client` extension point, so the same code path runs everywhere.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from urllib.parse import urlencode, urlsplit, urlunsplit

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from gateway import metrics
from gateway.config import Settings
from gateway.domain.message_log import LoggedText
from gateway.domain.outbound import DeliveryReport, ErrorKind, ProviderError, SentMessage, Status
from gateway.twilio.callbacks import fetched_report
from gateway.twilio.errors import error_kind
from gateway.twilio.statuses import our_status


class RedirectingHttpClient(TwilioHttpClient):
    """Sends every *.twilio.com request to `base_url` instead (the sandbox, a local stub)."""

    def __init__(self, base_url: str, timeout: float):
        super().__init__(timeout=timeout)
        self.base = urlsplit(base_url)

    def request(self, method, url, *args, **kwargs):
        parts = urlsplit(url)
        if parts.hostname and parts.hostname.endswith(".twilio.com"):
            url = urlunsplit((self.base.scheme, self.base.netloc, self.base.path.rstrip("/") + parts.path,
                              parts.query, parts.fragment))
        return super().request(method, url, *args, **kwargs)


def _read_environment_once(session: requests.Session) -> None:
    """Make `session` read its proxy and CA-bundle settings from the environment once per host.

    requests reads them again on every call (a measurable share of the worker's CPU a message,
    bench/README.md: it scans the environment and matches no_proxy); they do not change while the process runs. Explicit
    settings (the client passes none) still go through as they are.
    """
    merge = session.merge_environment_settings
    known: dict[tuple[str, str], dict] = {}

    def merged(url, proxies, stream, verify, cert):
        if proxies or stream is not None or verify is not None or cert is not None:
            return merge(url, proxies, stream, verify, cert)
        origin = urlsplit(url)[:2]
        settings = known.get(origin)
        if settings is None:
            settings = known[origin] = merge(url, {}, None, None, None)
        return {**settings, "proxies": dict(settings["proxies"])}

    session.merge_environment_settings = merged


class Provider:
    """Sends SMS through Twilio (or the sandbox) and translates every outcome into ours."""

    def __init__(self, account_sid: str, auth_token: str, *, api_base_url: str | None, status_callback: str,
                 timeout: float = 10.0):
        http_client = (RedirectingHttpClient(api_base_url, timeout) if api_base_url
                       else TwilioHttpClient(timeout=timeout))
        _read_environment_once(http_client.session)
        # A non-empty environment keeps the client from reading TWILIO_* variables on its own.
        self.client = Client(account_sid, auth_token, http_client=http_client, environment={"_": "_"})
        self.status_callback = status_callback
        self.timeout = timeout
        self._files = requests.Session()
        _read_environment_once(self._files)

    @classmethod
    def from_settings(cls, settings: Settings) -> Provider:
        return cls(settings.twilio_account_sid, settings.twilio_auth_token,
                   api_base_url=settings.twilio_api_base_url,
                   status_callback=settings.public_url("/webhooks/twilio/status"))

    def send(self, *, to: str, sender: str, body: str, reference: str | None = None) -> SentMessage:
        """Hand one message to Twilio; raise ProviderError with its meaning if Twilio refuses.

        `reference` (our message id) rides on the status-callback URL, so a callback that arrives
        before we have stored Twilio's sid still finds its message.
        """
        callback = self.status_callback + (f"?{urlencode({'message_id': reference})}" if reference else "")
        sender_args = {"messaging_service_sid": sender} if sender.startswith("MG") else {"from_": sender}
        started = time.perf_counter()
        try:
            with _translated():
                message = self.client.messages.create(to=to, body=body, status_callback=callback,
                                                      **sender_args)
        finally:
            metrics.PROVIDER_LATENCY.observe(time.perf_counter() - started)
        return _sent(message)

    def fetch(self, sid: str) -> SentMessage:
        """The provider's current view of one message."""
        with _translated():
            return _sent(self.client.messages(sid).fetch())

    def delivery_report(self, sid: str) -> DeliveryReport:
        """What became of one message, as a status callback would have told us."""
        fetched = self.fetch(sid)
        return fetched_report(sid, fetched.provider_status, fetched.error_code)

    def messages_since(self, *, to: str, sender: str, since: datetime, limit: int = 100) -> list[SentMessage]:
        """Messages to `to` from `sender` created since `since`, newest first, whether Twilio has sent
        them yet or not. Twilio's only date filter is on DateSent, which leaves out what it accepted
        and has not sent (or failed): those are filtered here, on DateCreated."""
        filters = {"to": to}
        if not sender.startswith("MG"):
            filters["from_"] = sender
        since = since.astimezone(UTC)
        with _translated():
            listed = [_sent(m) for m in self.client.messages.list(**filters, limit=limit)]
        return [m for m in listed if m.date_created is not None and m.date_created >= since]

    def inbound_messages(self, *, to: str | None, since: datetime, page_size: int = 1000) -> list[LoggedText]:
        """Every inbound text Twilio holds that was sent to `to` (None: to any of the account's numbers)
        on or after `since`, following the list's pages to the end; newest first, as Twilio lists them.

        Twilio's list has no direction filter: what we sent to `to` (nothing, for our own numbers; the
        whole account's traffic, for `to=None`) is read and left out here.
        """
        filters = {"to": to} if to else {}
        # The client writes the time as given with a Z: it must be UTC already.
        since = since.astimezone(UTC)
        with _translated():
            return [_logged(m) for m in self.client.messages.stream(date_sent_after=since, page_size=page_size,
                                                                     **filters)
                    if m.direction == "inbound" and (m.date_sent or m.date_created) is not None]


    # What of a Lookup answer is kept as evidence: the number itself is left out (the ledger event is
    # the number's already, and erasure must not have a second copy to find).
    LOOKUP_KEPT = ("valid", "validation_errors", "country_code", "calling_country_code", "line_type_intelligence",
                   "reassigned_number")

    def lookup(self, e164: str, *, fields: tuple[str, ...], last_verified: date | None = None) -> dict:
        """Lookup v2 for one number (`line_type_intelligence`, `reassigned_number`), as Twilio answered.

        Each package is billed per request: the caller asks only for what it will use.
        """
        options = {"fields": ",".join(fields)}
        if last_verified is not None:
            options["last_verified_date"] = last_verified.strftime("%Y%m%d")
        started = time.perf_counter()
        try:
            with _translated():
                found = self.client.lookups.v2.phone_numbers(e164).fetch(**options)
        finally:
            metrics.LOOKUP_LATENCY.observe(time.perf_counter() - started)
        return {key: getattr(found, key, None) for key in self.LOOKUP_KEPT}

    def deactivated_numbers(self, day: date) -> list[str]:
        """The lines of the carriers' Deactivations file for `day` (one United States number a line).

        Twilio answers the list request with a short-lived signed URL of the file (`redirect_to`);
        the file is fetched from it without our credentials, which belong to Twilio's API only.
        """
        with _translated():
            redirect = self.client.messaging.v1.deactivations().fetch(date=day).redirect_to
        if not redirect:
            raise ProviderError(ErrorKind.RETRYABLE, None, "the Deactivations answer named no file")
        with _translated():
            response = self._files.get(redirect, timeout=self.timeout)
        if response.status_code != 200:
            raise ProviderError(ErrorKind.RETRYABLE, None,
                                f"the Deactivations file answered HTTP {response.status_code}")
        return response.text.splitlines()


def _twilio_code(code: object) -> int | None:
    # The client puts the HTTP status in `code` when the body had none; Twilio's own codes are longer.
    return code if isinstance(code, int) and code >= 10000 else None


def _classify(status: int | None, code: int | None, message: str) -> ProviderError:
    return ProviderError(error_kind(code, status), code, message)


def classify_rest_error(error: TwilioRestException) -> ProviderError:
    """Twilio's error (HTTP status and code) as ours."""
    return _classify(error.status, _twilio_code(error.code), error.msg)


@contextmanager
def _translated() -> Iterator[None]:
    """Every way a Twilio call can fail, as a ProviderError."""
    try:
        yield
    except TwilioRestException as error:
        raise classify_rest_error(error) from None
    except TwilioServiceException as error:  # an RFC 9457 problem document: not a TwilioRestException
        raise _classify(error.status, _twilio_code(error.code), error.detail or error.title) from None
    except TwilioException as error:
        # e.g. a list page answered with an error: the client keeps only the response.
        response = error.args[1] if len(error.args) > 1 else None
        status, code = getattr(response, "status_code", None), None
        message = str(error.args[0] if error.args else error)
        try:
            payload = json.loads(response.text)
            code, message = _twilio_code(payload.get("code")), f"{message}: {payload.get('message', '')}"
        except (AttributeError, TypeError, ValueError):
            pass
        raise _classify(status, code, message) from None
    except requests.RequestException as error:
        # Timeouts, refused connections, dropped connections: nothing says the message was refused.
        raise ProviderError(ErrorKind.RETRYABLE, None, f"provider unreachable: {type(error).__name__}") from None
    except ValueError as error:  # a 2xx whose body is not JSON: whatever answered is not Twilio
        raise ProviderError(ErrorKind.RETRYABLE, None, f"unreadable provider answer: {error}") from None


def _logged(message) -> LoggedText:
    return LoggedText(
        sid=message.sid, from_=getattr(message, "from_", None) or "", to=message.to or "", body=message.body or "",
        date_sent=(message.date_sent or message.date_created).astimezone(UTC),
        messaging_service_sid=message.messaging_service_sid, account_sid=message.account_sid,
    )


def _sent(message) -> SentMessage:
    return SentMessage(
        sid=message.sid, status=our_status(message.status) or Status.SENT, provider_status=message.status,
        error_code=message.error_code, date_created=message.date_created, to=message.to,
        sender=getattr(message, "from_", None) or message.messaging_service_sid, body=message.body,
    )
