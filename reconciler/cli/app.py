"""Command line: ``reconciler change | status | reconcile | run | emulator | demo | ...``.

This module wires things together; the emulator is imported lazily and only by the
``emulator`` and ``demo`` commands.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from reconciler import __version__
from reconciler.cli.render import print_change, print_quote, print_status
from reconciler.domain.policy import PolicyError
from reconciler.logs import configure_logging
from reconciler.settings import Settings, load_settings

app = typer.Typer(
    help="Usage-preserving plan changes for self-hosted OpenMeter.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
policy_app = typer.Typer(help="Check and explain the change policy.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
events_app = typer.Typer(help="Outbound events to the portal.", no_args_is_help=True)
app.add_typer(events_app, name="events")

out = Console(soft_wrap=True)  # a message is one line, whatever the terminal width
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_USAGE_NOT_PRESERVED = 3


def _settings() -> Settings:
    try:
        s = load_settings()
    except Exception as exc:  # pydantic ValidationError: show the fields
        err.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from exc
    configure_logging(s.log_level, s.log_format, force=True)
    return s


class AdminUnavailable(Exception):
    """The running service's admin API cannot be used (no token, not reachable, refused)."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _run(factory: Callable[[], Awaitable[T]], *, locked_hint: str | None = None) -> T:
    """Run a command's coroutine; an expected condition is one line on stderr and an exit
    code, never a traceback. ``locked_hint``: what to do when the service holds the SQLite
    database (the admin route to use)."""
    from reconciler.engine import QuoteError
    from reconciler.engine.catalog import UnknownPlan
    from reconciler.openmeter.errors import NotFound, OpenMeterError
    from reconciler.store import StoreError, StoreLockedError

    try:
        return asyncio.run(factory())  # type: ignore[arg-type]
    except (UnknownPlan, QuoteError) as exc:  # what the user asked for cannot be done
        err.print(f"[red]{_one_line(exc)}[/red]", soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except PolicyError as exc:
        err.print(f"[red]policy error:[/red] {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except StoreLockedError as exc:
        hint = f" {locked_hint}" if locked_hint else ""
        err.print(f"[red]database in use:[/red] {_one_line(exc)}{hint}", soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    except StoreError as exc:
        err.print(f"[red]database error:[/red] {_one_line(exc)}", soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    except AdminUnavailable as exc:
        err.print(f"[red]admin API:[/red] {_one_line(exc)}", soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    except NotFound as exc:
        err.print(f"[red]not found:[/red] {_one_line(exc.detail or exc)}", soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except OpenMeterError as exc:
        err.print(f"[red]OpenMeter error:[/red] {_one_line(exc)}", soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    except OSError as exc:  # e.g. an unreadable database directory
        err.print(f"[red]error:[/red] {_one_line(exc)}", soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    except Exception as exc:
        import httpx

        if isinstance(exc, httpx.HTTPError):  # the clock URL, say
            err.print(f"[red]HTTP error:[/red] {_one_line(exc) or type(exc).__name__}")
            raise typer.Exit(EXIT_FAILED) from None
        raise


def _admin_base(settings: Settings) -> str:
    """The running service's own port (``HTTP_HOST`` / ``HTTP_PORT``), on loopback when it
    listens on every interface."""
    host = settings.http_host
    if host in ("", "0.0.0.0", "::", "[::]"):  # noqa: S104 - where to connect, not listen
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}"


async def _admin_call(
    settings: Settings, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """One call of the running service's admin API; (status, JSON body)."""
    import httpx

    base = _admin_base(settings)
    if settings.admin_token is None:
        raise AdminUnavailable(
            f"the service holds the database; {method} {path} on its admin API needs "
            "RECONCILER_ADMIN_TOKEN (not set)"
        )
    headers = {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            r = await http.request(method, path, headers=headers, json=body)
    except httpx.HTTPError as exc:
        raise AdminUnavailable(
            f"the service holds the database but its admin API at {base} did not answer "
            f"({type(exc).__name__}); use {method} {path} where it listens"
        ) from None
    try:
        doc = r.json()
    except ValueError:
        doc = {"detail": r.text[:200]}
    if r.status_code in (401, 403):
        raise AdminUnavailable(f"{method} {base}{path}: {r.status_code} (check ADMIN_TOKEN)")
    return r.status_code, doc


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


@app.command()
def change(
    customer: Annotated[str, typer.Argument(help="OpenMeter customer id or key")],
    plan: Annotated[str, typer.Argument(help="target plan key")],
    plan_version: Annotated[int | None, typer.Option("--version", help="plan version")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="plan only, change nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Plan a plan change and (unless --dry-run) apply it now."""
    settings = _settings()
    code = _run(lambda: _change(settings, customer, plan, plan_version, dry_run, as_json))
    raise typer.Exit(code)


async def _probe_lock(settings: Settings) -> None:
    """StoreLockedError when another process (the service) holds the SQLite database."""
    from reconciler.store import Store

    store = await Store.open(
        settings.database_url.get_secret_value(), instance_id=settings.instance_id
    )
    await store.close()


async def _open_store_for_reading(settings: Settings) -> Any:
    """The store, read-only when the running service holds it (SQLite, WAL: the last committed
    state); otherwise as before, migrated."""
    from reconciler.runtime import require_migrated
    from reconciler.store import Store, StoreLockedError

    url = settings.database_url.get_secret_value()
    try:
        store = await Store.open(url, instance_id=settings.instance_id)
    except StoreLockedError:
        store = await Store.open(url, instance_id=settings.instance_id, read_only=True)
        try:
            await require_migrated(store)
        except BaseException:
            await store.close()
            raise
        return store
    try:
        await store.migrate()
    except BaseException:
        await store.close()
        raise
    return store


async def _change_through_service(
    settings: Settings, customer: str, plan: str, plan_version: int | None, as_json: bool
) -> int:
    """The service holds the database: store the request through its admin API (it reconciles
    the customer at once); ``reconciler status`` shows how it went."""
    from urllib.parse import quote

    path = f"/v1/customers/{quote(customer, safe='')}/plan-change"
    status, doc = await _admin_call(
        settings, "POST", path, {"plan": plan, "plan_version": plan_version}
    )
    if status >= 400:
        detail = doc.get("detail") if isinstance(doc, dict) else doc
        err.print(f"[red]POST {path}: {status}[/red] {_one_line(detail)}", soft_wrap=True)
        return EXIT_BAD_INPUT if status < 500 else EXIT_FAILED
    if as_json:
        _print_json(doc)
    else:
        got = doc if isinstance(doc, dict) else {}
        out.print(
            f"stored by the running service (POST {path}): change {got.get('change_id')} "
            f"{got.get('status')} ({got.get('state')}); it reconciles now, "
            f"`reconciler status {customer}` shows the result"
        )
    return EXIT_OK


async def _change(
    settings: Settings,
    customer: str,
    plan: str,
    plan_version: int | None,
    dry_run: bool,
    as_json: bool,
) -> int:
    from reconciler.engine import ChangeReport, ChangeRequest, Preview, submit
    from reconciler.engine.views import change_json, preview_json
    from reconciler.runtime import open_runtime
    from reconciler.store import StoreLockedError
    from reconciler.store.types import ChangeSource

    if not dry_run:
        try:
            await _probe_lock(settings)
        except StoreLockedError:
            return await _change_through_service(settings, customer, plan, plan_version, as_json)
    async with open_runtime(settings, validate_policy=True, read_only_if_locked=dry_run) as rt:
        preview = await rt.queries.preview(customer, plan, plan_version)
        result: Preview | ChangeReport = preview
        code = EXIT_OK
        if not dry_run:
            submitted = await submit(
                rt.store,
                rt.clock,
                ChangeRequest(customer, plan, plan_version),
                ChangeSource.CLI,
                f"cli-{uuid.uuid4()}",
            )
            outcome = await rt.engine.reconcile(customer)
            # What OpenMeter shows now, not what the preview expected.
            now_values = (await rt.queries.status(customer, audit_limit=0)).observed.values
            result = ChangeReport(
                preview, await rt.store.get_change(submitted.change.id), outcome, now_values
            )
            if outcome.usage_not_preserved:
                code = EXIT_USAGE_NOT_PRESERVED
            elif outcome.status == "failed":
                code = EXIT_FAILED
        elif preview.result.refusal:
            code = EXIT_FAILED
    if as_json:
        _print_json(
            change_json(result) if isinstance(result, ChangeReport) else preview_json(result)
        )
    else:
        print_change(out, result)
    return code


@app.command()
def status(
    customer: Annotated[str, typer.Argument(help="OpenMeter customer id or key")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Plan on record, effective plan, scheduled successor, entitlements, desired state, audit."""
    from reconciler.engine import StatusReport
    from reconciler.engine.views import status_json

    settings = _settings()

    async def go() -> StatusReport:
        from reconciler.runtime import open_runtime

        # beside a running service (SQLite locked): read-only, as its admin API reads
        async with open_runtime(settings, read_only_if_locked=True) as rt:
            return await rt.queries.status(customer)

    report = _run(go)
    if as_json:
        _print_json(status_json(report))
    else:
        print_status(out, report)


@app.command()
def reconcile(
    customer: Annotated[str | None, typer.Option("--customer", help="only this customer")] = None,
    all_customers: Annotated[
        bool, typer.Option("--all", help="also every OpenMeter customer (rebuilds lost state)")
    ] = False,
) -> None:
    """One pass over every customer with a pending or unconverged change."""
    settings = _settings()
    code = _run(
        lambda: _reconcile(settings, customer, all_customers),
        locked_hint="The running service reconciles on its own; to ask it for a pass now use "
        'its admin API: POST /v1/sweeps {"full": true}.',
    )
    raise typer.Exit(code)


async def _reconcile(settings: Settings, customer: str | None, all_customers: bool) -> int:
    from rich.progress import Progress

    from reconciler.engine import adopt
    from reconciler.runtime import open_runtime

    async with open_runtime(settings, validate_policy=True) as rt:
        targets: list[str] = []
        if customer:
            targets = [customer]
        else:
            if all_customers:
                async for c in rt.client.iter_customers():
                    ref = c.key or c.id
                    await adopt(rt.collaborators, ref)
            async for ref in rt.store.customers_with_desired():
                targets.append(ref)
        counts: dict[str, int] = {}
        failed = 0
        with Progress(console=err, disable=not err.is_terminal, transient=True) as progress:
            task = progress.add_task("reconciling", total=len(targets))
            for ref in targets:
                outcome = await rt.engine.reconcile(ref)
                key = outcome.status or outcome.state.value
                counts[key] = counts.get(key, 0) + 1
                if outcome.status == "failed":
                    failed += 1
                progress.advance(task)
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "nothing to do"
        out.print(f"{len(targets)} customer(s) reconciled — {summary}")
        return EXIT_FAILED if failed else EXIT_OK


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (the service also does this at start)."""
    settings = _settings()

    async def go() -> None:
        from reconciler.store import Store

        store = await Store.open(
            settings.database_url.get_secret_value(), instance_id=settings.instance_id
        )
        try:
            await store.migrate()
        finally:
            await store.close()

    _run(go, locked_hint="The running service migrated it when it started.")
    out.print("database migrated")


@policy_app.command("check")
def policy_check(
    path: Annotated[Path | None, typer.Argument(help="policy file (default: settings)")] = None,
) -> None:
    """Load the policy and report errors with their line numbers."""
    from reconciler.runtime import load_policy

    settings = _settings()
    try:
        pol = load_policy(path or settings.policy_path)
    except PolicyError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_BAD_INPUT) from exc
    ladder = " < ".join("/".join(group) for group in pol.ladder) or "(none)"
    out.print(f"policy OK ({pol.source}): ladder {ladder}, {len(pol.rules)} rule(s)")


@policy_app.command("explain")
def policy_explain(
    from_plan: Annotated[str, typer.Argument(help="plan key the customer has")],
    to_plan: Annotated[str, typer.Argument(help="plan key requested")],
    path: Annotated[Path | None, typer.Option("--policy", help="policy file")] = None,
) -> None:
    """Show which rule decides a change from one plan to another, and why."""
    from reconciler.runtime import load_policy

    settings = _settings()
    try:
        pol = load_policy(path or settings.policy_path)
        for line in pol.explain(from_plan, to_plan):
            out.print(line)
    except PolicyError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_BAD_INPUT) from exc


@app.command()
def run() -> None:
    """Run the service: webhooks, admin API, metrics and the reconcile loop (until SIGTERM)."""
    from reconciler.service.server import serve

    settings = _settings()
    try:
        serve(settings)
    except PolicyError as exc:
        err.print(f"[red]policy error:[/red] {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from exc


@app.command()
def quote(
    customer: Annotated[str, typer.Argument(help="OpenMeter customer id or key")],
    plan: Annotated[
        str | None, typer.Option("--plan", help="also quote a change to this plan")
    ] = None,
    plan_version: Annotated[int | None, typer.Option("--version", help="plan version")] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="RFC 3339 time of the change (default now)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Expected charges of the current billing period, line by line (--plan: after a change)."""
    from reconciler.engine import QuoteReport, parse_at
    from reconciler.engine.views import quote_json

    settings = _settings()
    try:
        when = parse_at(at)
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_BAD_INPUT) from exc

    async def go() -> QuoteReport:
        from reconciler.runtime import open_runtime

        async with open_runtime(settings, read_only_if_locked=True) as rt:
            return await rt.quoter.quote(
                customer, plan_key=plan, plan_version=plan_version, at=when
            )

    report = _run(go)
    if as_json:
        _print_json(quote_json(report))
    else:
        print_quote(out, report)


@events_app.command("list")
def events_list(
    status_filter: Annotated[
        str | None, typer.Option("--status", help="pending|delivered|dead|disabled")
    ] = None,
    limit: Annotated[int, typer.Option(help="rows")] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="as GET /v1/events answers: {items, next_cursor}")
    ] = False,
) -> None:
    """List outbound events (newest first). Works beside a running service."""
    from reconciler.store import EventStatus

    if status_filter is not None and status_filter not in {s.value for s in EventStatus}:
        err.print(f"[red]--status must be one of {', '.join(s.value for s in EventStatus)}[/red]")
        raise typer.Exit(EXIT_BAD_INPUT)
    settings = _settings()

    async def go() -> tuple[list[Any], str | None]:
        store = await _open_store_for_reading(settings)
        try:
            rows, cursor = await store.list_events(status=status_filter, limit=limit)
            return list(rows), cursor
        finally:
            await store.close()

    rows, cursor = _run(go)
    if as_json:
        from reconciler.service.app import event_view

        _print_json({"items": [event_view(e) for e in rows], "next_cursor": cursor})
        return
    t = Table(title="Outbound events")
    for col in ("id", "type", "customer", "status", "attempts", "next attempt", "last error"):
        t.add_column(col)
    for e in rows:
        t.add_row(
            e.id,
            e.type,
            e.customer or "-",
            e.status.value,
            str(e.attempts),
            str(e.next_attempt_at or "-"),
            (e.last_error or "")[:50],
        )
    out.print(t)


@events_app.command("redeliver")
def events_redeliver(event_id: Annotated[str, typer.Argument(help="event id (evt_…)")]) -> None:
    """Queue a dead or disabled event for delivery again (through the running service's admin
    API, POST /v1/events/{id}/redeliver, when it holds the SQLite database)."""
    settings = _settings()

    async def go() -> tuple[str | None, str]:
        from datetime import UTC, datetime
        from urllib.parse import quote

        from reconciler.store import Store, StoreLockedError
        from reconciler.store.errors import EventNotFoundError, InvalidTransitionError

        try:
            store = await Store.open(
                settings.database_url.get_secret_value(), instance_id=settings.instance_id
            )
        except StoreLockedError:
            path = f"/v1/events/{quote(event_id, safe='')}/redeliver"
            status, doc = await _admin_call(settings, "POST", path)
            if status >= 400:
                detail = doc.get("detail") if isinstance(doc, dict) else doc
                return f"POST {path}: {status} {_one_line(detail)}", ""
            return None, f" by the running service (POST {path})"
        try:
            await store.migrate()
            await store.redeliver(event_id, datetime.now(UTC))
        except (EventNotFoundError, InvalidTransitionError) as exc:
            return str(exc), ""
        finally:
            await store.close()
        return None, ""

    problem, via = _run(go)
    if problem:
        err.print(f"[red]{problem}[/red]", soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    out.print(f"event {event_id} queued for delivery{via}")


@app.command()
def emulator(
    host: Annotated[str, typer.Option(help="listen address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="listen port")] = 8888,
    catalog: Annotated[Path | None, typer.Option(help="catalog file to load at start")] = None,
    billing: Annotated[
        bool, typer.Option(help="model OpenMeter's billing (invoices) with the default profile")
    ] = False,
) -> None:
    """Run the OpenMeter emulator (for demos and tests; not for production)."""
    from reconciler.emulator.server import serve

    configure_logging("INFO", "console")
    serve(host, port, str(catalog) if catalog else None, billing)


@app.command()
def demo(
    catalog: Annotated[Path | None, typer.Option(help="demo catalog")] = None,
    policy: Annotated[Path | None, typer.Option(help="policy file")] = None,
) -> None:
    """Run the emulator with the demo catalog and tell the plan-change story, checking each step."""
    from reconciler.cli.demo import run_demo

    configure_logging("WARNING", "console")
    ok = run_demo(out, catalog=catalog, policy=policy)
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED)


def main() -> None:
    app()
