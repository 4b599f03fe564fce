"""connections: managed_by (file origin), close_action, pool, request_virtual_ip;
mobike off (it was stored but never acted on)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 01:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('connections') as batch:
        batch.add_column(sa.Column('close_action', sa.Enum(
            'none', 'start', 'trap', name='closeaction', native_enum=False, length=16),
            nullable=False, server_default='none'))
        batch.add_column(sa.Column('pool', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('request_virtual_ip', sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column('managed_by', sa.String(length=255), nullable=True))
        batch.create_index(batch.f('ix_connections_managed_by'), ['managed_by'], unique=False)
    op.execute(sa.text('UPDATE connections SET mobike = :off').bindparams(off=False))


def downgrade() -> None:
    with op.batch_alter_table('connections') as batch:
        batch.drop_index(batch.f('ix_connections_managed_by'))
        batch.drop_column('managed_by')
        batch.drop_column('request_virtual_ip')
        batch.drop_column('pool')
        batch.drop_column('close_action')
