"""Jobs: how many of their findings were flagged for review or withheld.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("flagged", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("withheld", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("withheld")
        batch.drop_column("flagged")
