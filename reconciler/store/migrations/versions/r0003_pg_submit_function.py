"""PostgreSQL: a change request's submit as one server-side function (one round trip).

``Store.submit_change`` on PostgreSQL calls ``reconciler_submit_change`` instead of running
three statements between BEGIN and COMMIT: a webhook's submit is one round trip, in autocommit.
The function keeps the rules of the statements it replaces (docs/STORE.md, "Submitting a
request"), and every store test runs it. SQLite has no server-side functions: nothing changes
there.

The function returns rows of ``change_requests``: first the request (a twin stored earlier
under the same (source, source_id), or the new row), then the requests it superseded. A later
revision that changes ``change_requests`` or the open statuses must replace it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

# Each statement of a VOLATILE PL/pgSQL function takes a fresh snapshot under READ COMMITTED,
# so the reads after the row lock see whatever the lock waited for (a twin of this request, a
# newer desired request), as the separate statements did.
_CREATE = """
CREATE FUNCTION reconciler_submit_change(
    b_id text,
    b_customer text,
    b_customer_id text,
    b_plan_key text,
    b_plan_version integer,
    b_requested_at timestamptz,
    b_source text,
    b_source_id text,
    b_details jsonb,
    b_now timestamptz
) RETURNS SETOF change_requests
LANGUAGE plpgsql VOLATILE AS $body$
DECLARE
    known_id text;
    desired_id text;
    desired_at timestamptz;
    stale boolean;
BEGIN
    -- a customer's submits are serialised on its row
    SELECT c.customer_id, c.desired_change_id INTO known_id, desired_id
        FROM customers c WHERE c.customer = b_customer FOR UPDATE;
    IF NOT FOUND THEN
        -- waits out another transaction's uncommitted insert of the same customer
        INSERT INTO customers (customer, version, updated_at) VALUES (b_customer, 0, b_now)
            ON CONFLICT (customer) DO NOTHING;
        SELECT c.customer_id, c.desired_change_id INTO STRICT known_id, desired_id
            FROM customers c WHERE c.customer = b_customer FOR UPDATE;
    END IF;
    IF b_source_id IS NOT NULL THEN
        RETURN QUERY SELECT * FROM change_requests r
            WHERE r.source = b_source AND r.source_id = b_source_id;
        IF FOUND THEN
            RETURN;  -- the same request again: nothing is written
        END IF;
    END IF;
    SELECT r.requested_at INTO desired_at FROM change_requests r WHERE r.id = desired_id;
    -- older than the desired request: stored, superseded at once
    stale := coalesce(b_requested_at < desired_at, false);
    RETURN QUERY INSERT INTO change_requests AS r (
            id, customer, customer_id, plan_key, plan_version, requested_at, received_at,
            source, source_id, status, attempts, updated_at, details)
        VALUES (b_id, b_customer, coalesce(b_customer_id, known_id), b_plan_key,
            b_plan_version, b_requested_at, b_now, b_source, b_source_id,
            CASE WHEN stale THEN 'superseded' ELSE 'pending' END, 0, b_now, b_details)
        RETURNING r.*;
    IF stale THEN
        IF b_customer_id IS NOT NULL AND known_id IS NULL THEN
            UPDATE customers SET customer_id = b_customer_id, updated_at = b_now
                WHERE customer = b_customer;
        END IF;
        RETURN;
    END IF;
    RETURN QUERY UPDATE change_requests r SET status = 'superseded', updated_at = b_now
        WHERE r.customer = b_customer
            AND r.status IN ('pending', 'applied', 'scheduled', 'failed')
            AND r.id <> b_id
        RETURNING r.*;
    UPDATE customers
        SET desired_change_id = b_id,
            next_check_at = b_now,
            customer_id = coalesce(b_customer_id, known_id),
            version = version + 1,
            updated_at = b_now
        WHERE customer = b_customer;
END
$body$
"""

_SIGNATURE = (
    "reconciler_submit_change(text, text, text, text, integer, timestamptz, text, text, jsonb, "
    "timestamptz)"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION {_SIGNATURE}")
