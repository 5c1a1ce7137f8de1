"""Index customers by their resolved OpenMeter id (to find one customer addressed two ways).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_customers_customer_id", "customers", ["customer_id"])


def downgrade() -> None:
    op.drop_index("ix_customers_customer_id", table_name="customers")
