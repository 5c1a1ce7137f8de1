"""The HTTP side of ``reconciler run``: portal webhooks, admin API, health and metrics.

``create_app(settings)`` returns a Starlette app whose lifespan opens the runtime (store,
OpenMeter client, engine; migrations run there), starts the :class:`Worker` and, at shutdown,
drains it. Routes:

==========================================  =====================================================
``POST /v1/webhooks/portal``                Standard Webhooks, ``plan_change.requested``
``GET  /v1/customers/{customer}``           status (as ``reconciler status --json``)    [admin]
``POST /v1/customers/{customer}/plan-change`` preview (dry run) or store a change request  [admin]
``GET  /v1/changes``                        change requests, newest first, paginated    [admin]
``GET  /v1/events``                         outbound events, newest first, paginated    [admin]
``POST /v1/events/{id}/redeliver``          queue a dead/disabled event again           [admin]
``POST /v1/sweeps``                         run a sweep now (``{"full": true}``: adopt too) [admin]
``GET  /healthz`` ``/readyz`` ``/metrics``  probes and Prometheus
==========================================  =====================================================
"""

from __future__ import annotations

import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from reconciler.domain.timefmt import iso_z
from reconciler.engine import ChangeRequest, IdempotencyConflict, QuoteError, parse_at, submit
from reconciler.engine.catalog import UnknownPlan
from reconciler.engine.pacing import Pacer
from reconciler.engine.views import preview_json, quote_json, status_json
from reconciler.logs import bound, get_logger
from reconciler.openmeter.errors import NotFound, OpenMeterError
from reconciler.runtime import Runtime, open_runtime
from reconciler.service import webhooks as wh
from reconciler.service.metrics import CONTENT_TYPE, Metrics
from reconciler.service.problems import ProblemError, from_error, problem
from reconciler.service.worker import Worker
from reconciler.settings import Settings
from reconciler.store import (
    ChangeRecord,
    ChangeSource,
    ChangeStatus,
    EventNotFoundError,
    EventStatus,
    InvalidCursorError,
    InvalidTransitionError,
    OutboxEvent,
    StoreError,
    StoreUnavailable,
    SubmitResult,
)

log = get_logger("reconciler.service")

READY_CACHE_S = 3.0
READY_TIMEOUT_S = 2.0
MAX_PAGE = 500
IDEMPOTENCY_KEY_MAX = 256

Handler = Callable[[Request], Awaitable[Response]]


class JSON(JSONResponse):
    """JSON that also renders Decimals and datetimes (preview and status documents)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_default, separators=(",", ":")).encode()


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_z(value)
    return str(value)


def change_view(c: ChangeRecord) -> dict[str, Any]:
    return {
        "id": c.id,
        "customer": c.customer,
        "customer_id": c.customer_id,
        "plan": c.plan_key,
        "plan_version": c.plan_version,
        "status": c.status.value,
        "source": c.source.value,
        "source_id": c.source_id,
        "requested_at": iso_z(c.requested_at),
        "received_at": iso_z(c.received_at),
        "updated_at": iso_z(c.updated_at),
        "direction": c.direction.value if c.direction else None,
        "timing": c.timing.value if c.timing else None,
        "rule": c.rule,
        "effective_at": iso_z(c.effective_at),
        "converges_at": iso_z(c.converges_at),
        "attempts": c.attempts,
        "next_attempt_at": iso_z(c.next_attempt_at),
        "last_error": c.last_error,
    }


def event_view(e: OutboxEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "type": e.type,
        "customer": e.customer,
        "change_id": e.change_id,
        "status": e.status.value,
        "attempts": e.attempts,
        "next_attempt_at": iso_z(e.next_attempt_at),
        "last_error": e.last_error,
        "created_at": iso_z(e.created_at),
        "delivered_at": iso_z(e.delivered_at),
        "payload": dict(e.payload),
    }


@dataclass
class Service:
    """Everything the handlers share. ``runtime`` and ``worker`` exist between start and stop."""

    settings: Settings
    metrics: Metrics
    keys: list[bytes]
    wall_clock: Callable[[], float] = time.time
    refresh_seconds: float = 5.0
    sweep_at_start: bool = True
    runtime: Runtime | None = None
    worker: Worker | None = None
    startup_error: BaseException | None = None
    _ready: tuple[float, list[str]] | None = None
    _migrated: bool = False
    _probe: httpx.AsyncClient | None = field(default=None, repr=False)

    @property
    def admin_token(self) -> bytes | None:
        tok = self.settings.admin_token
        value = tok.get_secret_value() if tok is not None else ""
        return value.encode() if value else None

    def rt(self) -> Runtime:
        if self.runtime is None:
            raise ProblemError(503, "the service is starting or stopping", kind="unavailable")
        return self.runtime

    def work(self) -> Worker:
        if self.worker is None or self.worker.stopping:
            raise ProblemError(503, "the service is starting or stopping", kind="unavailable")
        return self.worker

    def begin_shutdown(self) -> None:
        if self.worker is not None:
            self.worker.begin_shutdown()

    # -- lifespan ----------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        s = self.settings
        if not self.keys:
            log.warning(
                "webhooks_disabled",
                reason="RECONCILER_WEBHOOK_SECRETS is not set: the webhook route answers 404",
            )
        if self.admin_token is None:
            log.warning(
                "admin_api_disabled",
                reason="RECONCILER_ADMIN_TOKEN is not set: every /v1 admin route answers 404",
            )
        started = False
        try:
            async with open_runtime(
                s, hooks=self.metrics.hooks(), call_observer=self.metrics.observe_call
            ) as rt:
                headers = {"User-Agent": "openmeter-reconciler/readyz"}
                if s.openmeter_token is not None and s.openmeter_token.get_secret_value():
                    headers["Authorization"] = f"Bearer {s.openmeter_token.get_secret_value()}"
                self._probe = httpx.AsyncClient(
                    base_url=s.openmeter_url, timeout=READY_TIMEOUT_S, headers=headers
                )
                worker = Worker(
                    rt,
                    self.metrics,
                    refresh_seconds=self.refresh_seconds,
                    sweep_at_start=self.sweep_at_start,
                )
                try:
                    await worker.start()
                    started = True
                    self.runtime, self.worker = rt, worker
                    log.info(
                        "service_started",
                        instance=s.instance_id,
                        database=rt.store.dialect,
                        openmeter_url=s.openmeter_url,
                        http=f"{s.http_host}:{s.http_port}",
                    )
                    yield
                finally:
                    await worker.stop(s.drain_seconds)
                    self.worker = None
                    self.runtime = None
                    await self._probe.aclose()
        except BaseException as exc:
            if not started:
                self.startup_error = exc
                log.error("start_failed", error=f"{type(exc).__name__}: {exc}")
            raise
        log.info("service_stopped", instance=s.instance_id)

    # -- readiness ---------------------------------------------------------------------------

    async def readiness(self) -> list[str]:
        """Reasons the service is not ready (empty: ready). Cached for a few seconds."""
        now = time.monotonic()
        if self._ready is not None and now - self._ready[0] < READY_CACHE_S:
            return self._ready[1]
        reasons: list[str] = []
        rt, worker = self.runtime, self.worker
        if rt is None or worker is None or worker.stopping:
            return ["the service is starting or stopping"]
        if not await rt.store.ping():
            reasons.append("database unreachable")
        elif not self._migrated:
            # Checked until it holds once: the schema does not move back under a running
            # process, and the check is not free (Alembic reads its scripts).
            try:
                self._migrated = await rt.store.is_migrated()
                if not self._migrated:
                    reasons.append("database schema is not at the newest migration")
            except StoreError as exc:
                reasons.append(f"database error: {exc}")
        assert self._probe is not None
        try:
            resp = await self._probe.get("/api/v1/customers", params={"pageSize": 1})
            if resp.status_code >= 500 or resp.status_code in (401, 403):
                reasons.append(f"OpenMeter answered {resp.status_code} to GET /api/v1/customers")
        except httpx.HTTPError as exc:
            reasons.append(f"OpenMeter unreachable: {type(exc).__name__}")
        self._ready = (now, reasons)
        return reasons


# ---------------------------------------------------------------------------------------------
# helpers


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) as soon as more than ``limit`` bytes arrive."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ProblemError(400, "header Content-Length is not a number", kind="invalid")
        if int(declared) > limit:
            raise ProblemError(
                413,
                f"body of {int(declared)} bytes exceeds the limit of {limit} bytes",
                kind="too-large",
            )
    buf = bytearray()
    try:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise ProblemError(
                    413, f"body exceeds the limit of {limit} bytes", kind="too-large"
                )
    except ClientDisconnect as exc:
        raise ProblemError(
            400, "the client disconnected before the body was complete", kind="invalid"
        ) from exc
    return bytes(buf)


def _query_limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return 50
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise ProblemError(
            400, f"query parameter limit: must be an integer from 1 to {MAX_PAGE}", kind="invalid"
        )
    return int(raw)


def _query_enum(request: Request, name: str, allowed: list[str]) -> str | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if raw not in allowed:
        raise ProblemError(
            400, f"query parameter {name}: must be one of {', '.join(allowed)}", kind="invalid"
        )
    return raw


def _endpoint(svc: Service, fn: Callable[[Service, Request], Awaitable[Response]]) -> Handler:
    async def handler(request: Request) -> Response:
        try:
            return await fn(svc, request)
        except ProblemError as err:
            return from_error(err)
        except StoreUnavailable as exc:
            log.warning("store_unavailable", path=request.url.path, error=str(exc))
            return problem(
                503,
                "database unavailable; retry later",
                kind="unavailable",
                headers={"Retry-After": "5"},
            )
        except httpx.HTTPError as exc:  # the HTTP clock (demo and tests only)
            log.warning("clock_unavailable", path=request.url.path, error=type(exc).__name__)
            return problem(
                503,
                "clock unavailable; retry later",
                kind="unavailable",
                headers={"Retry-After": "5"},
            )
        except Exception:
            log.exception("request_failed", method=request.method, path=request.url.path)
            return problem(500, "internal error; the reconciler logged the details")

    return handler


def _admin(svc: Service, fn: Callable[[Service, Request], Awaitable[Response]]) -> Handler:
    async def guarded(s: Service, request: Request) -> Response:
        expected = s.admin_token
        if expected is None:
            raise ProblemError(
                404,
                "the admin API is disabled: RECONCILER_ADMIN_TOKEN is not set",
                kind="admin-disabled",
            )
        header = request.headers.get("authorization")
        challenge = {"WWW-Authenticate": 'Bearer realm="reconciler-admin"'}
        if header is None:
            raise ProblemError(
                401,
                "missing header Authorization: Bearer <admin token>",
                kind="admin-unauthorized",
                headers=challenge,
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ProblemError(
                401,
                "header Authorization must be 'Bearer <admin token>'",
                kind="admin-unauthorized",
                headers=challenge,
            )
        if not hmac.compare_digest(token.strip().encode(), expected):
            raise ProblemError(
                401, "invalid admin token", kind="admin-unauthorized", headers=challenge
            )
        return await fn(s, request)

    return _endpoint(svc, guarded)


# ---------------------------------------------------------------------------------------------
# webhooks


def _change_body(change: ChangeRecord, req: wh.PlanChange) -> dict[str, Any]:
    return {
        "status": "superseded" if change.status is ChangeStatus.SUPERSEDED else "accepted",
        "change_id": change.id,
        "state": change.status.value,
        "customer": req.customer,
        "plan": req.plan,
        "plan_version": req.plan_version,
        "requested_at": iso_z(req.requested_at),
    }


@contextlib.contextmanager
def engine_problems() -> Iterator[None]:
    """What the engine's read side raises, as problems: one mapping for every admin route."""
    try:
        yield
    except UnknownPlan as exc:
        raise ProblemError(422, f"unknown plan: {exc}", kind="unknown-plan") from exc
    except QuoteError as exc:
        raise ProblemError(422, str(exc), kind="invalid") from exc
    except NotFound as exc:
        raise ProblemError(404, f"OpenMeter: {exc.detail}", kind="not-found") from exc
    except OpenMeterError as exc:
        raise ProblemError(502, f"OpenMeter error: {exc}", kind="openmeter") from exc


async def _store_change(
    svc: Service,
    req: wh.PlanChange,
    source: ChangeSource,
    source_id: str | None,
) -> tuple[SubmitResult, int, dict[str, Any]]:
    rt = svc.rt()
    worker = svc.work()
    request = ChangeRequest(req.customer, req.plan, req.plan_version, req.requested_at)
    try:
        result = await submit(rt.store, rt.clock, request, source, source_id, wake=worker.kick)
    except IdempotencyConflict as exc:
        # 409: the id was used before for a different request (not malformed)
        raise ProblemError(
            409, str(exc), kind="conflict", extra={"change_id": exc.change.id}
        ) from exc
    change = result.change
    # The version as requested (the engine records the resolved one), the time as stored.
    body = _change_body(
        change, wh.PlanChange(req.customer, req.plan, req.plan_version, change.requested_at)
    )
    return result, 202 if result.created else 200, body


async def portal_webhook(svc: Service, request: Request) -> Response:
    """Webhook intake runs in the foreground: reconciles make way while it is in flight
    (``reconciler.engine.pacing``)."""
    if svc.runtime is None:
        return await _portal_webhook(svc, request, None)
    pacer = svc.runtime.engine.pacer
    with pacer.foreground():
        return await _portal_webhook(svc, request, pacer)


async def _portal_webhook(svc: Service, request: Request, pacer: Pacer | None) -> Response:
    m = svc.metrics.webhooks
    if not svc.keys:
        m.labels("disabled").inc()
        raise ProblemError(
            404,
            "webhooks are disabled: RECONCILER_WEBHOOK_SECRETS is not set",
            kind="webhooks-disabled",
        )
    try:
        body = await read_body(request, svc.settings.webhook_max_body_bytes)
        wall = svc.wall_clock()
        hdrs = wh.verify(
            request.headers,
            body,
            svc.keys,
            tolerance_seconds=svc.settings.webhook_tolerance_seconds,
            now=wall,
        )
        with bound(webhook_id=hdrs.msg_id):
            doc = wh.parse_json(body)
            wall_dt = datetime.fromtimestamp(wall, UTC)
            event = wh.parse_event(
                doc, future_limit=wh.future_limit(wall_dt, svc.settings.webhook_tolerance_seconds)
            )
            if isinstance(event, wh.Ignored):
                m.labels("ignored").inc()
                log.info("webhook_ignored", type=event.type[:100])
                return JSON({"status": "ignored", "type": event.type}, status_code=202)
            with pacer.boost(event.customer) if pacer else contextlib.nullcontext():
                result, status, out = await _store_change(
                    svc, event, ChangeSource.WEBHOOK, hdrs.msg_id
                )
    except ProblemError as err:
        # 409: the webhook-id was used before for a different request (not malformed)
        outcome = {401: "unauthorized", 409: "conflict", 413: "too_large"}.get(err.status)
        if outcome is None:
            outcome = "invalid" if 400 <= err.status < 500 else "error"
        m.labels(outcome).inc()
        if err.status == 401:
            log.warning("webhook_rejected", status=err.status, detail=err.detail)
        raise
    except Exception:
        m.labels("error").inc()
        raise
    if status == 200:
        m.labels("duplicate").inc()
    elif result.change.status is ChangeStatus.SUPERSEDED:
        m.labels("superseded").inc()
    else:
        m.labels("accepted").inc()
    return JSON(out, status_code=status)


# ---------------------------------------------------------------------------------------------
# admin


async def customer_status(svc: Service, request: Request) -> Response:
    customer = wh.check_customer(request.path_params["customer"], "path customer")
    with engine_problems():
        report = await svc.rt().queries.status(customer)
    return JSON(status_json(report))


async def customer_quote(svc: Service, request: Request) -> Response:
    """``GET /v1/customers/{c}/quote[?plan=P&plan_version=V&at=T]`` — same as ``reconciler quote
    --json``: the current period's expected charges, and with ``plan`` after that change."""
    customer = wh.check_customer(request.path_params["customer"], "path customer")
    q = request.query_params
    plan = wh.check_plan(q["plan"], "query plan") if "plan" in q else None
    version = None
    if "plan_version" in q:
        raw = q["plan_version"]
        if not raw.isdigit() or int(raw) < 1:
            raise ProblemError(
                400, "query plan_version: must be a positive integer", kind="invalid"
            )
        version = int(raw)
    try:
        at = parse_at(q.get("at"))
    except ValueError as exc:
        raise ProblemError(400, f"query at: {exc}", kind="invalid") from exc
    with engine_problems():
        report = await svc.rt().quoter.quote(customer, plan_key=plan, plan_version=version, at=at)
    return JSON(quote_json(report))


async def plan_change(svc: Service, request: Request) -> Response:
    customer = wh.check_customer(request.path_params["customer"], "path customer")
    body = await read_body(request, svc.settings.webhook_max_body_bytes)
    doc = wh.parse_json(body)
    if not isinstance(doc, dict):
        raise ProblemError(400, "body must be a JSON object", kind="invalid")
    plan = wh.check_plan(doc.get("plan"), "plan")
    version = wh.check_version(doc.get("plan_version"), "plan_version")
    dry_run = doc.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ProblemError(400, "field dry_run: must be true or false", kind="invalid")
    rt = svc.rt()
    if dry_run:
        with engine_problems():
            preview = await rt.queries.preview(customer, plan, version)
        return JSON(preview_json(preview))
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key.strip()) <= IDEMPOTENCY_KEY_MAX):
        raise ProblemError(
            400,
            f"header Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters",
            kind="invalid",
        )
    req = wh.PlanChange(customer, plan, version, None)
    _, status, out = await _store_change(
        svc, req, ChangeSource.ADMIN, key.strip() if key is not None else None
    )
    return JSON(out, status_code=status)


async def list_changes(svc: Service, request: Request) -> Response:
    status = _query_enum(request, "status", [s.value for s in ChangeStatus])
    customer = request.query_params.get("customer")
    if customer is not None:
        wh.check_customer(customer, "query parameter customer")
    limit = _query_limit(request)
    try:
        rows, cursor = await svc.rt().store.list_changes(
            status=status,
            customer=customer,
            limit=limit,
            cursor=request.query_params.get("cursor"),
        )
    except InvalidCursorError as exc:
        raise ProblemError(400, f"query parameter cursor: {exc}", kind="invalid") from exc
    return JSON({"items": [change_view(c) for c in rows], "next_cursor": cursor})


async def list_events(svc: Service, request: Request) -> Response:
    status = _query_enum(request, "status", [s.value for s in EventStatus])
    limit = _query_limit(request)
    try:
        rows, cursor = await svc.rt().store.list_events(
            status=status, limit=limit, cursor=request.query_params.get("cursor")
        )
    except InvalidCursorError as exc:
        raise ProblemError(400, f"query parameter cursor: {exc}", kind="invalid") from exc
    return JSON({"items": [event_view(e) for e in rows], "next_cursor": cursor})


async def redeliver_event(svc: Service, request: Request) -> Response:
    """``POST /v1/events/{id}/redeliver`` — as ``reconciler events redeliver ID``: a dead,
    disabled (or still pending) event is queued for delivery now, its attempts from zero."""
    event_id = request.path_params["event_id"]
    rt = svc.rt()
    try:
        event = await rt.store.redeliver(event_id, await rt.clock.now())
    except EventNotFoundError as exc:
        raise ProblemError(404, str(exc), kind="not-found") from exc
    except InvalidTransitionError as exc:
        raise ProblemError(409, str(exc), kind="conflict") from exc
    return JSON(event_view(event))


async def run_sweep(svc: Service, request: Request) -> Response:
    body = await read_body(request, svc.settings.webhook_max_body_bytes)
    doc = wh.parse_json(body) if body.strip() else {}
    if not isinstance(doc, dict) or not isinstance(doc.get("full", False), bool):
        raise ProblemError(400, 'body must be {"full": true|false}', kind="invalid")
    worker = svc.work()
    if not await worker.check_leader():
        raise ProblemError(
            409, "this replica does not hold the sweep leadership", kind="not-leader"
        )
    counts = await worker.sweep(full=bool(doc.get("full", False)))
    return JSON({"full": bool(doc.get("full", False)), "customers": counts})


# ---------------------------------------------------------------------------------------------
# probes


async def healthz(svc: Service, request: Request) -> Response:
    return JSON({"status": "ok"})


async def readyz(svc: Service, request: Request) -> Response:
    reasons = await svc.readiness()
    if reasons:
        return problem(503, "; ".join(reasons), kind="not-ready")
    return JSON({"status": "ready"})


async def metrics_endpoint(svc: Service, request: Request) -> Response:
    return PlainTextResponse(svc.metrics.render(), media_type=CONTENT_TYPE)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = {
        404: f"no route {request.url.path}",
        405: f"method {request.method} not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    return problem(exc.status_code, detail, headers=exc.headers)


# ---------------------------------------------------------------------------------------------


def create_app(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    wall_clock: Callable[[], float] = time.time,
    refresh_seconds: float = 5.0,
    sweep_at_start: bool = True,
) -> Starlette:
    """Build the service app. Raises ``WebhookConfigError`` for an unusable webhook secret."""
    svc = Service(
        settings=settings,
        metrics=metrics or Metrics(),
        keys=wh.secret_keys(settings.webhook_secret_list()),
        wall_clock=wall_clock,
        refresh_seconds=refresh_seconds,
        sweep_at_start=sweep_at_start,
    )
    routes = [
        Route("/v1/webhooks/portal", _endpoint(svc, portal_webhook), methods=["POST"]),
        Route("/v1/customers/{customer}", _admin(svc, customer_status), methods=["GET"]),
        Route("/v1/customers/{customer}/plan-change", _admin(svc, plan_change), methods=["POST"]),
        Route("/v1/customers/{customer}/quote", _admin(svc, customer_quote), methods=["GET"]),
        Route("/v1/changes", _admin(svc, list_changes), methods=["GET"]),
        Route("/v1/events", _admin(svc, list_events), methods=["GET"]),
        Route("/v1/events/{event_id}/redeliver", _admin(svc, redeliver_event), methods=["POST"]),
        Route("/v1/sweeps", _admin(svc, run_sweep), methods=["POST"]),
        Route("/healthz", _endpoint(svc, healthz), methods=["GET"]),
        Route("/readyz", _endpoint(svc, readyz), methods=["GET"]),
        Route("/metrics", _endpoint(svc, metrics_endpoint), methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=svc.lifespan,
        exception_handlers={HTTPException: _http_error},
    )
    app.state.service = svc
    return app
