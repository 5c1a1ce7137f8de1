"""Typed async client for self-hosted OpenMeter (v1.0.0-beta.227).

One :class:`OpenMeterClient` per process (it owns an ``httpx.AsyncClient`` connection pool); use
it as an async context manager or call :meth:`OpenMeterClient.aclose`.

Retry rules (see ``docs/OPENMETER_CLIENT.md`` for the reasoning):

* **Reads** (``GET``) are idempotent. They are retried on transport errors (connect errors,
  timeouts, dropped connections), ``408`` (OpenMeter's answer when the request context was
  cancelled), ``429`` and ``5xx`` except ``501``/``505`` (permanent), up to ``read_retries``
  extra attempts, with full-jitter exponential backoff capped at ``max_retry_sleep``. A
  ``Retry-After`` header (delta-seconds or HTTP date) replaces the backoff for that attempt (still
  capped by ``max_retry_sleep``).
* **Mutations** (``POST``/``PATCH``/``PUT``/``DELETE``) are never retried. If the response was
  lost the mutation may or may not have been applied: :class:`TransportError` is raised with
  ``ambiguous=True`` (``False`` when the connection was never established, i.e. nothing was
  sent) and the caller re-observes OpenMeter and re-plans. A level-triggered reconciler converges
  from observed state, so it never needs the client to guess.
* **Event ingestion** is the one ``POST`` that is retried like a read (opt out with
  ``retry=False``): a CloudEvent is identified by ``(source, id)``; OpenMeter's sink drops
  duplicates of the same key inside a flush batch always and across batches when its deduplicator
  is enabled (``openmeter/sink/sink.go`` ``flush``; ``openmeter/dedupe/dedupe.go`` ``Item.Key``;
  the quickstart config enables ``sink.dedupe`` with Redis). Callers must use stable event ids.

Every attempt is reported to the optional ``observer`` (sync or async callable) as a
:class:`CallRecord`; an observer that raises is logged and otherwise ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from reconciler.openmeter import sockets
from reconciler.openmeter.errors import (
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
    UnexpectedStatus,
    error_for_response,
)
from reconciler.openmeter.models import (
    CloudEvent,
    Customer,
    CustomerListing,
    EntitlementV2,
    EntitlementValueModel,
    Feature,
    InvoiceModel,
    Meter,
    MeterQueryResult,
    Page,
    PlanModel,
    Subscription,
    SubscriptionChangeResponse,
    SubscriptionExpanded,
)

if TYPE_CHECKING:
    from reconciler.settings import Settings

log = logging.getLogger(__name__)


USER_AGENT = "openmeter-reconciler/0.1"
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"
MAX_PAGE_SIZE = 1000  # OpenMeter's pageSize maximum (api/openapi.yaml Pagination.pageSize)
_MUTATING = frozenset({"POST", "PATCH", "PUT", "DELETE"})
_NOT_RETRIED_5XX = frozenset({501, 505})
# httpx errors raised before any byte of the request reached the server.
_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One HTTP attempt, as reported to the observer."""

    operation: str  # e.g. "edit_subscription"
    method: str
    path: str
    request_body: Any  # the JSON body sent (None for reads)
    status: int | None  # None when no response was received
    detail: str | None  # error detail (None on success)
    duration_s: float
    attempt: int  # 1-based
    error: str | None  # exception class name (None on success)


Observer = Callable[[CallRecord], Awaitable[None] | None]
Sleep = Callable[[float], Awaitable[None]]


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); ``None`` if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def format_time(dt: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix; naive datetimes are refused."""
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: OpenMeter times must be timezone-aware")
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, Decimal):
        return str(value)  # OpenMeter's money type (Numeric) is a decimal string
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _dumps(body: Any) -> bytes:
    return json.dumps(body, default=_json_default, separators=(",", ":")).encode()


def _timing(value: str | datetime | Enum) -> str:
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, Enum):
        return str(value.value)
    return value


def _when_sent(sent: asyncio.Event) -> Callable[[str, Mapping[str, Any]], Awaitable[None]]:
    """An httpx ``trace`` extension that sets ``sent`` once the request has been written."""

    async def trace(event: str, _info: Mapping[str, Any]) -> None:
        if event.endswith("send_request_body.complete"):
            sent.set()

    return trace


def _seg(value: str) -> str:
    """A path parameter, percent-encoded whole: OpenMeter's keys may hold ``?``, ``#``, ``%``
    or ``;``, which would otherwise end the path or read as an escape (a key ``a?b`` would ask
    for customer ``a``). OpenMeter's router unescapes path parameters before use."""
    return quote(value, safe="")


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, TransportError):
        return True
    if isinstance(exc, RateLimited):
        return True
    if isinstance(exc, ServerError):
        return exc.status not in _NOT_RETRIED_5XX
    return isinstance(exc, UnexpectedStatus) and exc.status == 408


@dataclass(frozen=True)
class _Attempted:
    """What the backoff reads of tenacity's retry state: the number of the attempt that failed."""

    attempt_number: int


class _Wait:
    """Full-jitter exponential backoff, replaced by ``Retry-After`` when the server sent one.

    ``offset``: attempts made before tenacity's loop began (its attempt 1 is the call's
    attempt ``1 + offset``)."""

    def __init__(self, base: float, cap: float, offset: int = 0) -> None:
        self._jitter = wait_random_exponential(multiplier=base, max=cap)
        self._cap = cap
        self._offset = offset

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return self.after(state.attempt_number + self._offset, exc)

    def after(self, attempt: int, exc: BaseException | None) -> float:
        """The sleep after the call's attempt number ``attempt`` failed with ``exc``."""
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float):
            return float(min(max(retry_after, 0.0), self._cap))
        return float(self._jitter(_Attempted(attempt)))  # type: ignore[arg-type]


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(tp: Any) -> TypeAdapter[Any]:
    ad = _ADAPTERS.get(tp)
    if ad is None:
        ad = _ADAPTERS[tp] = TypeAdapter(tp)
    return ad


async def _cancelled(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (a request sent ahead that turned out not to be needed) and wait for it
    to end; its outcome, error included, is dropped."""
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # retrieved: not reported as "never retrieved"


def _list_param(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(v.value) if isinstance(v, Enum) else str(v) for v in value]


class NoCookies(httpx.Cookies):
    """Cookies that stay empty: OpenMeter's API sets none, and an API client carries none from
    one call to the next (httpx would otherwise wrap and parse every response for them)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _HTTPClient(httpx.AsyncClient):
    """httpx's client, without a cookie jar (``NoCookies``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._no_cookies = NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise ValueError("the OpenMeter client keeps no cookies")


class OpenMeterClient:
    """Async OpenMeter API client. See the module docstring for the retry rules."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        max_connections: int = 32,
        read_retries: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: Observer | None = None,
        backoff_base: float = 0.25,
        max_retry_sleep: float = 30.0,
        sleep: Sleep | None = None,
    ) -> None:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._base = base_url.rstrip("/")
        self._timeout = timeout.as_dict()
        self._http = _HTTPClient(
            base_url=self._base,
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )
        # What every request carries: these and httpx's defaults (Accept-Encoding, Connection),
        # as the client's own request building would merge them.
        self._headers = dict(self._http.headers)
        if transport is None:
            sockets.install(self._http)  # a cheaper idle-connection check (sockets.py)
        self.read_retries = read_retries
        # httpx's own transport (httpcore) reports through the ``trace`` extension when a
        # request has been written; a transport given here (tests, in-process apps) may not.
        self._reports_writes = transport is None
        self._observer = observer
        self._wait = _Wait(backoff_base, max_retry_sleep)
        self._wait_rest = _Wait(backoff_base, max_retry_sleep, offset=1)
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: Observer | None = None,
    ) -> OpenMeterClient:
        token = settings.openmeter_token.get_secret_value() if settings.openmeter_token else None
        return cls(
            settings.openmeter_url,
            token=token or None,
            connect_timeout=settings.openmeter_connect_timeout,
            read_timeout=settings.openmeter_read_timeout,
            max_connections=settings.openmeter_max_connections,
            read_retries=settings.openmeter_read_retries,
            transport=transport,
            observer=observer,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ----------------------------------------------------------------------------------------
    # Core

    async def _notify(self, record: CallRecord) -> None:
        if self._observer is None:
            return
        try:
            result = self._observer(record)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("OpenMeter call observer failed", extra={"operation": record.operation})

    async def _attempt(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: Any,
        body: Any,
        content_type: str,
        attempt: int,
        sent: asyncio.Event | None = None,
    ) -> httpx.Response:
        content = _dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if content is not None else None
        recorded_body = json.loads(content) if content is not None else None
        started = time.perf_counter()
        try:
            response = await self._dispatch(method, path, params, content, headers, sent)
        except httpx.TransportError as exc:
            written = not isinstance(exc, _NOT_SENT)
            err = TransportError(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                method=method,
                path=path,
                ambiguous=written and method in _MUTATING,
                cause=exc,
            )
            await self._notify(
                CallRecord(
                    operation,
                    method,
                    path,
                    recorded_body,
                    None,
                    err.detail,
                    time.perf_counter() - started,
                    attempt,
                    type(err).__name__,
                )
            )
            raise err from exc
        duration = time.perf_counter() - started
        if response.is_success:
            await self._notify(
                CallRecord(
                    operation,
                    method,
                    path,
                    recorded_body,
                    response.status_code,
                    None,
                    duration,
                    attempt,
                    None,
                )
            )
            return response
        error = error_for_response(
            response,
            method=method,
            path=path,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
        await self._notify(
            CallRecord(
                operation,
                method,
                path,
                recorded_body,
                response.status_code,
                error.detail,
                duration,
                attempt,
                type(error).__name__,
            )
        )
        raise error

    async def _request(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: Any = None,
        body: Any = None,
        content_type: str = "application/json",
        retry: bool | None = None,
        sent: asyncio.Event | None = None,
    ) -> httpx.Response:
        """One call, retried as configured. ``sent`` is set once the request (of any attempt)
        is on the wire."""
        if retry is None:
            retry = method not in _MUTATING
        attempts = self.read_retries + 1 if retry else 1
        call = functools.partial(
            self._attempt,
            operation,
            method,
            path,
            params=params,
            body=body,
            content_type=content_type,
            sent=sent,
        )
        # The first attempt outside tenacity: most calls succeed at once, and building its loop
        # for every call cost 1.6-2 % of the service's CPU (docs/BENCHMARKS.md, eleventh
        # session). A retryable failure sleeps the first backoff; the retries run in the loop.
        try:
            return await call(attempt=1)
        except Exception as exc:
            if attempts == 1 or not _is_retryable(exc):
                raise
            await self._sleep(self._wait.after(1, exc))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts - 1),
            wait=self._wait_rest,
            retry=retry_if_exception(_is_retryable),
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await call(attempt=attempt.retry_state.attempt_number + 1)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    async def _dispatch(
        self,
        method: str,
        path: str,
        params: Any,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        sent: asyncio.Event | None,
    ) -> httpx.Response:
        """One request, its body read. Straight to the pool's transport, as
        ``httpx.AsyncClient.send`` would end up: the client's layers above it (URL merging,
        cookies, auth, redirects, event hooks) do nothing for this client, which keeps no
        cookies, sends its token as a header and follows no redirects, and cost about a fifth
        of a call's CPU (docs/BENCHMARKS.md, eleventh session). With proxies mounted from the
        environment, the client's own ``send`` picks the transport."""
        extensions: dict[str, Any] = {"timeout": self._timeout}
        if sent is not None:
            extensions["trace"] = _when_sent(sent)
        request = httpx.Request(
            method,
            self._base + path,
            params=params,
            content=content,
            headers=self._headers if headers is None else {**self._headers, **headers},
            extensions=extensions,
        )
        http = self._http
        if http.is_closed:
            raise RuntimeError("the OpenMeter client is closed")
        if http._mounts:  # proxies from the environment
            return await http.send(request)
        response = await http._transport.handle_async_request(request)
        response.request = request
        try:
            await response.aread()
        except BaseException:
            await response.aclose()
            raise
        return response

    async def _send(self, tp: Any, operation: str, method: str, path: str, **kw: Any) -> Any:
        """A call whose JSON answer is parsed as ``tp`` (mutations are never retried)."""
        return self._parse(await self._request(operation, method, path, **kw), tp)

    def _parse(self, response: httpx.Response, tp: Any) -> Any:
        try:
            return _adapter(tp).validate_json(response.content)
        except ValidationError as exc:
            raise UnexpectedStatus(
                response.status_code,
                f"unexpected response body: {exc.error_count()} validation error(s): "
                + "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5]
                ),
                None,
                method=response.request.method,
                path=response.request.url.path,
            ) from exc

    async def _get(self, operation: str, path: str, tp: Any, params: Any = None) -> Any:
        return self._parse(await self._request(operation, "GET", path, params=params), tp)

    async def _pages(
        self,
        operation: str,
        path: str,
        item_type: Any,
        params: Mapping[str, Any] | None = None,
        *,
        page_size: int | None = MAX_PAGE_SIZE,
    ) -> AsyncIterator[list[Any]]:
        """Yield each page's items until ``totalCount`` items were seen.

        With ``page_size=None`` the first request carries no page parameters: endpoints such as
        ``listCustomerSubscriptions`` then answer every item with ``page: 0`` (reference §1); a
        paged answer is followed page by page with the server's ``pageSize``.
        """
        base = dict(params or {})
        page = 1
        size = page_size
        seen = 0
        while True:
            q = dict(base)
            if size is not None:
                q["page"] = page
                q["pageSize"] = size
            result: Page[Any] = await self._get(operation, path, Page[item_type], q)
            yield result.items
            seen += len(result.items)
            if result.page == 0 or not result.items or seen >= result.total_count:
                return
            page = result.page + 1
            size = result.page_size or size or MAX_PAGE_SIZE

    async def _pages_ahead(
        self,
        operation: str,
        path: str,
        item_type: Any,
        params: Mapping[str, Any] | None = None,
        *,
        page_size: int = MAX_PAGE_SIZE,
    ) -> AsyncGenerator[list[Any], None]:
        """``_pages`` for long walks (sweeps): still one request in flight at a time, but the
        request for the next page goes out as soon as this page's answer has arrived, before
        it is parsed and while the caller works on it, so OpenMeter builds the next page
        meanwhile instead of waiting for us.

        The next page is requested ahead only when the count the first page announced says
        there is one; if the count changed while paging, the parsed page decides as in
        ``_pages`` (a request sent ahead for nothing is cancelled; a page that appeared is
        then requested in turn).
        """
        tp = Page[item_type]
        base = dict(params or {})

        async def fetch(page: int, size: int) -> asyncio.Task[httpx.Response]:
            """The request for ``page``, in a task; returns once it is on the wire (or over), so
            that OpenMeter builds the page while this one is parsed."""
            q = {**base, "page": page, "pageSize": size}
            if not self._reports_writes:
                task = asyncio.create_task(self._request(operation, "GET", path, params=q))
                await asyncio.sleep(0)  # its first turn
                return task
            sent = asyncio.Event()
            task = asyncio.create_task(self._request(operation, "GET", path, params=q, sent=sent))
            task.add_done_callback(lambda _: sent.set())
            try:
                await sent.wait()
            except BaseException:  # closed meanwhile: the request is not wanted any more
                task.cancel()
                raise
            return task

        first: Page[Any] = self._parse(await (await fetch(1, page_size)), tp)
        announced = first.total_count
        size = first.page_size or page_size
        result = first
        seen = 0
        ahead: asyncio.Task[httpx.Response] | None = None
        try:
            while True:
                seen += len(result.items)
                if ahead is None and not (
                    result.page == 0 or not result.items or seen >= result.total_count
                ):
                    # after the first page, or when the count grew while paging
                    ahead = await fetch(result.page + 1, size)
                yield result.items
                if ahead is None:
                    return
                response = await ahead
                ahead = None
                page = result.page + 1
                if page * size < announced:  # by the announced count, another page follows
                    ahead = await fetch(page + 1, size)
                result = self._parse(response, tp)
                if ahead is not None and (
                    not result.items or seen + len(result.items) >= result.total_count
                ):
                    await _cancelled(ahead)  # this page is the last after all
                    ahead = None
        finally:
            await _cancelled(ahead)

    async def _all(
        self,
        operation: str,
        path: str,
        item_type: Any,
        params: Mapping[str, Any] | None = None,
        *,
        page_size: int | None = MAX_PAGE_SIZE,
    ) -> list[Any]:
        out: list[Any] = []
        async for items in self._pages(operation, path, item_type, params, page_size=page_size):
            out.extend(items)
        return out

    async def _rest_of(
        self, operation: str, path: str, item_type: Any, first: Page[Any]
    ) -> list[Any]:
        """Items of ``first`` plus those of the pages after it (for a paged first answer)."""
        items = list(first.items)
        page, size = first.page, first.page_size or MAX_PAGE_SIZE
        while page and first.items and len(items) < first.total_count:
            page += 1
            nxt: Page[Any] = await self._get(
                operation, path, Page[item_type], {"page": page, "pageSize": size}
            )
            if not nxt.items:
                break
            items.extend(nxt.items)
        return items

    # ----------------------------------------------------------------------------------------
    # Customers

    async def get_customer(self, customer: str, *, expand_subscriptions: bool = False) -> Customer:
        params = {"expand": ["subscriptions"]} if expand_subscriptions else None
        result: Customer = await self._get(
            "get_customer", f"/api/v1/customers/{_seg(customer)}", Customer, params
        )
        return result

    async def list_customers(
        self, page: int = 1, page_size: int = 100, expand_subscriptions: bool = False
    ) -> Page[Customer]:
        params: dict[str, Any] = {"page": page, "pageSize": page_size}
        if expand_subscriptions:
            params["expand"] = ["subscriptions"]
        result: Page[Customer] = await self._get(
            "list_customers", "/api/v1/customers", Page[Customer], params
        )
        return result

    async def iter_customers(
        self, page_size: int = MAX_PAGE_SIZE, expand_subscriptions: bool = True
    ) -> AsyncIterator[Customer]:
        params = {"expand": ["subscriptions"]} if expand_subscriptions else None
        async for items in self._pages(
            "list_customers", "/api/v1/customers", Customer, params, page_size=page_size
        ):
            for c in items:
                yield c

    async def iter_customer_listings(
        self, page_size: int = MAX_PAGE_SIZE
    ) -> AsyncIterator[list[CustomerListing]]:
        """Every customer with its subscriptions, page by page, as slim listings (sweeps)."""
        params = {"expand": ["subscriptions"]}
        pages = self._pages_ahead(
            "list_customers", "/api/v1/customers", CustomerListing, params, page_size=page_size
        )
        async with contextlib.aclosing(pages):  # a caller that stops early cancels the read ahead
            async for items in pages:
                yield items

    async def create_customer(self, body: Mapping[str, Any] | BaseModel) -> Customer:
        result: Customer = await self._send(
            Customer, "create_customer", "POST", "/api/v1/customers", body=body
        )
        return result

    async def list_customer_subscriptions(
        self, customer: str, status: str | Sequence[str] | None = None
    ) -> list[Subscription]:
        params = {"status": _list_param(status)} if status is not None else None
        result: list[Subscription] = await self._all(
            "list_customer_subscriptions",
            f"/api/v1/customers/{_seg(customer)}/subscriptions",
            Subscription,
            params,
            page_size=None,
        )
        return result

    # ----------------------------------------------------------------------------------------
    # Subscriptions

    async def get_subscription(self, subscription_id: str) -> SubscriptionExpanded:
        result: SubscriptionExpanded = await self._get(
            "get_subscription",
            f"/api/v1/subscriptions/{_seg(subscription_id)}",
            SubscriptionExpanded,
        )
        return result

    async def list_subscription_addons(self, subscription_id: str) -> list[dict[str, Any]]:
        """``GET /api/v1/subscriptions/{id}/addons`` (a plain array of ``SubscriptionAddon``)."""
        result: list[dict[str, Any]] = await self._get(
            "list_subscription_addons",
            f"/api/v1/subscriptions/{_seg(subscription_id)}/addons",
            list[dict[str, Any]],
        )
        return result

    async def create_subscription(self, body: Mapping[str, Any] | BaseModel) -> Subscription:
        result: Subscription = await self._send(
            Subscription, "create_subscription", "POST", "/api/v1/subscriptions", body=body
        )
        return result

    async def edit_subscription(
        self,
        subscription_id: str,
        customizations: Sequence[Mapping[str, Any]],
        timing: str | Enum | None = "immediate",
    ) -> Subscription:
        """PATCH the subscription in place (``SubscriptionEdit``); ``timing`` is ``immediate``
        or ``next_billing_cycle`` (OpenMeter refuses custom times for edits)."""
        body: dict[str, Any] = {"customizations": list(customizations)}
        if timing is not None:
            body["timing"] = _timing(timing)
        result: Subscription = await self._send(
            Subscription,
            "edit_subscription",
            "PATCH",
            f"/api/v1/subscriptions/{_seg(subscription_id)}",
            body=body,
        )
        return result

    async def change_subscription(
        self, subscription_id: str, body: Mapping[str, Any] | BaseModel
    ) -> SubscriptionChangeResponse:
        result: SubscriptionChangeResponse = await self._send(
            SubscriptionChangeResponse,
            "change_subscription",
            "POST",
            f"/api/v1/subscriptions/{_seg(subscription_id)}/change",
            body=body,
        )
        return result

    async def cancel_subscription(
        self, subscription_id: str, timing: str | datetime | Enum | None = None
    ) -> Subscription:
        """Cancel. The body is required by OpenMeter: ``{}`` means immediately."""
        body: dict[str, Any] = {} if timing is None else {"timing": _timing(timing)}
        result: Subscription = await self._send(
            Subscription,
            "cancel_subscription",
            "POST",
            f"/api/v1/subscriptions/{_seg(subscription_id)}/cancel",
            body=body,
        )
        return result

    async def unschedule_cancelation(self, subscription_id: str) -> Subscription:
        result: Subscription = await self._send(
            Subscription,
            "unschedule_cancelation",
            "POST",
            f"/api/v1/subscriptions/{_seg(subscription_id)}/unschedule-cancelation",
        )
        return result

    async def delete_subscription(self, subscription_id: str) -> None:
        await self._request(
            "delete_subscription", "DELETE", f"/api/v1/subscriptions/{_seg(subscription_id)}"
        )

    async def migrate_subscription(
        self, subscription_id: str, body: Mapping[str, Any] | BaseModel
    ) -> SubscriptionChangeResponse:
        result: SubscriptionChangeResponse = await self._send(
            SubscriptionChangeResponse,
            "migrate_subscription",
            "POST",
            f"/api/v1/subscriptions/{_seg(subscription_id)}/migrate",
            body=body,
        )
        return result

    # ----------------------------------------------------------------------------------------
    # Plans

    async def list_plans(
        self,
        key: str | Sequence[str] | None = None,
        status: str | Sequence[str] | None = None,
    ) -> list[PlanModel]:
        """All plans (every page). Without ``status`` OpenMeter applies no status filter
        (drafts, active, scheduled and archived versions alike — beta.227
        ``openmeter/productcatalog/plan/adapter/plan.go`` ``ListPlans``)."""
        params: dict[str, Any] = {}
        if key is not None:
            params["key"] = _list_param(key)
        if status is not None:
            params["status"] = _list_param(status)
        result: list[PlanModel] = await self._all("list_plans", "/api/v1/plans", PlanModel, params)
        return result

    async def get_plan(self, id_or_key: str, include_latest: bool = False) -> PlanModel:
        """By ULID: that exact version. By key: the active version (``include_latest``: the
        highest version, drafts included)."""
        params = {"includeLatest": "true"} if include_latest else None
        result: PlanModel = await self._get(
            "get_plan", f"/api/v1/plans/{_seg(id_or_key)}", PlanModel, params
        )
        return result

    async def get_plan_version(self, key: str, version: int) -> PlanModel:
        """``key@version`` whatever its status (``NotFound`` if there is none).

        Uses the ``key`` list filter and picks the version here. The ``keyVersion[key]``
        deepObject filter is not used: OpenMeter binds it with oapi-codegen's deepObject
        decoder into ``map[string][]int``, which wants indexed keys (``keyVersion[k][0]=v``),
        while the spec declares it non-exploded, so no encoding is valid for both.
        """
        for p in await self.list_plans(key=key):
            if p.key == key and p.version == version:
                return p
        raise NotFound(
            404,
            f"plan {key}@v{version} not found",
            None,
            method="GET",
            path="/api/v1/plans",
        )

    # ----------------------------------------------------------------------------------------
    # Entitlements

    async def get_entitlement_value(self, customer: str, feature_key: str) -> EntitlementValueModel:
        result: EntitlementValueModel = await self._get(
            "get_entitlement_value",
            f"/api/v1/customers/{_seg(customer)}/entitlements/{_seg(feature_key)}/value",
            EntitlementValueModel,
        )
        return result

    async def get_entitlement_value_v2(
        self, customer: str, id_or_feature_key: str
    ) -> EntitlementValueModel:
        result: EntitlementValueModel = await self._get(
            "get_entitlement_value_v2",
            f"/api/v2/customers/{customer}/entitlements/{id_or_feature_key}/value",
            EntitlementValueModel,
        )
        return result

    async def list_customer_entitlements_v2(self, customer: str) -> list[EntitlementV2]:
        """Entitlements active now (beta.227 lists only those), all pages."""
        result: list[EntitlementV2] = await self._all(
            "list_customer_entitlements_v2",
            f"/api/v2/customers/{customer}/entitlements",
            EntitlementV2,
        )
        return result

    # ----------------------------------------------------------------------------------------
    # Events, features, meters

    async def ingest_events(
        self, events: Sequence[CloudEvent | Mapping[str, Any]], *, retry: bool = True
    ) -> None:
        """Ingest a CloudEvents batch. Retried like a read unless ``retry=False`` (see module
        docstring): give every event a stable ``id`` so a retried batch is deduplicated."""
        if not events:
            return
        batch = [
            e.model_dump(mode="json", by_alias=True, exclude_none=True)
            if isinstance(e, BaseModel)
            else dict(e)
            for e in events
        ]
        await self._request(
            "ingest_events",
            "POST",
            "/api/v1/events",
            body=batch,
            content_type=CLOUDEVENTS_BATCH,
            retry=retry,
        )

    # ----------------------------------------------------------------------------------------
    # Billing (read only)

    async def list_invoices(
        self, customer_id: str, *, statuses: Sequence[str] | None = None
    ) -> list[InvoiceModel]:
        """The customer's invoices with their lines (``listInvoices``, ``expand=lines``), the
        gathering invoice included; every page."""
        params: dict[str, Any] = {"customers": [customer_id], "expand": ["lines"]}
        if statuses:
            params["statuses"] = list(statuses)
        return await self._all("list_invoices", "/api/v1/billing/invoices", InvoiceModel, params)

    async def list_features(self) -> list[Feature]:
        """All features (OpenMeter answers a plain array when no page parameters are sent)."""
        resp = await self._request("list_features", "GET", "/api/v1/features")
        result: list[Feature] | Page[Feature] = self._parse(resp, list[Feature] | Page[Feature])
        if isinstance(result, Page):
            return await self._rest_of("list_features", "/api/v1/features", Feature, result)
        return result

    async def get_feature(self, id_or_key: str) -> Feature:
        result: Feature = await self._get(
            "get_feature", f"/api/v1/features/{_seg(id_or_key)}", Feature
        )
        return result

    async def list_meters(self) -> list[Meter]:
        resp = await self._request("list_meters", "GET", "/api/v1/meters")
        result: list[Meter] | Page[Meter] = self._parse(resp, list[Meter] | Page[Meter])
        if isinstance(result, Page):
            return await self._rest_of("list_meters", "/api/v1/meters", Meter, result)
        return result

    async def query_meter(
        self,
        slug: str,
        from_: datetime | None,
        to: datetime | None,
        window_size: str | None = None,
        filter_customer_id: str | Sequence[str] | None = None,
    ) -> MeterQueryResult:
        params: dict[str, Any] = {}
        if from_ is not None:
            params["from"] = format_time(from_)
        if to is not None:
            params["to"] = format_time(to)
        if window_size is not None:
            params["windowSize"] = window_size
        if filter_customer_id is not None:
            params["filterCustomerId"] = _list_param(filter_customer_id)
        result: MeterQueryResult = await self._get(
            "query_meter", f"/api/v1/meters/{_seg(slug)}/query", MeterQueryResult, params
        )
        return result
