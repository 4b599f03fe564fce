"""children: mss (TCP MSS clamping: auto, off or a number)

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-07 11:45:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('children') as batch:
        batch.add_column(sa.Column('mss', sa.String(length=8), nullable=False,
                                   server_default='off'))


def downgrade() -> None:
    with op.batch_alter_table('children') as batch:
        batch.drop_column('mss')
