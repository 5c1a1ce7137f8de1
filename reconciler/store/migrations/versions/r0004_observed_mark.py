"""change_requests.observed_mark: what OpenMeter showed when the change converged.

The engine stores it when a change converges (or a cancelation made outside is respected): the
current subscription's ``id@updatedAt`` and a digest of its items (``reconciler.domain.drift``).
The sweep compares it with the customer listing to find item drift on converged customers.
Nullable: rows converged before this revision get their mark at the next full sweep.

The PostgreSQL submit function (revision 0003) inserts with a column list and returns
``change_requests`` rows: the new nullable column needs no change to it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("change_requests", sa.Column("observed_mark", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("change_requests") as batch:
        batch.drop_column("observed_mark")
