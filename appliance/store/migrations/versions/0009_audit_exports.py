"""How far the audit trail has been sent to each audit repository (IHE ATNA syslog).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_exports",
        sa.Column("collector", sa.String(length=300), nullable=False),
        sa.Column(
            "last_event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.PrimaryKeyConstraint("collector", name=op.f("pk_audit_exports")),
    )


def downgrade() -> None:
    op.drop_table("audit_exports")
