"""children: mss (TCP MSS clamping: auto, off or a number); connections: RFC 8784
postquantum preshared key (ppk_id, ppk_secret_id, ppk_required)

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-07 11:45:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('children') as batch:
        batch.add_column(sa.Column('mss', sa.String(length=8), nullable=False,
                                   server_default='off'))
    with op.batch_alter_table('connections') as batch:
        batch.add_column(sa.Column('ppk_id', sa.String(length=255), nullable=True))
        batch.add_column(sa.Column('ppk_secret_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('ppk_required', sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.create_foreign_key(op.f('fk_connections_ppk_secret_id_secrets'), 'secrets',
                                 ['ppk_secret_id'], ['id'], ondelete='RESTRICT')


def downgrade() -> None:
    with op.batch_alter_table('connections') as batch:
        batch.drop_constraint(op.f('fk_connections_ppk_secret_id_secrets'),
                              type_='foreignkey')
        batch.drop_column('ppk_required')
        batch.drop_column('ppk_secret_id')
        batch.drop_column('ppk_id')
    with op.batch_alter_table('children') as batch:
        batch.drop_column('mss')
