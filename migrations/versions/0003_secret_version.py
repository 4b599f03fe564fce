"""secrets: version, the operator's label for the value (idempotence without reading it)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 05:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('secrets') as batch:
        batch.add_column(sa.Column('version', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('secrets') as batch:
        batch.drop_column('version')
