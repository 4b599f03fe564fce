"""gateways (a fleet of daemons on one database: name, addresses, version, heartbeat);
connections: the gateway that runs them (NULL: every gateway, as before); ike_sas and
child_sas: the gateway that recorded them. Existing rows keep NULL: nothing changes for
a single gateway's database. connections: a version for optimistic locking (409 on a
stale If-Match).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 15:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RECORDED = (('connections', 'RESTRICT'), ('ike_sas', 'CASCADE'), ('child_sas', 'CASCADE'))


def upgrade() -> None:
    op.create_table(
        'gateways',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('addresses', sa.JSON(), nullable=False),
        sa.Column('version', sa.String(length=64), nullable=False),
        sa.Column('heartbeat_interval', sa.Integer(), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_gateways')),
        sa.UniqueConstraint('name', name=op.f('uq_gateways_name')),
    )
    for table, on_delete in _RECORDED:
        with op.batch_alter_table(table) as batch:
            if table == 'connections':
                batch.add_column(sa.Column('version', sa.Integer(), nullable=False,
                                           server_default='1'))
            batch.add_column(sa.Column('gateway_id', sa.Integer(), nullable=True))
            batch.create_index(op.f(f'ix_{table}_gateway_id'), ['gateway_id'], unique=False)
            batch.create_foreign_key(op.f(f'fk_{table}_gateway_id_gateways'), 'gateways',
                                     ['gateway_id'], ['id'], ondelete=on_delete)


def downgrade() -> None:
    for table, _ in reversed(_RECORDED):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(f'fk_{table}_gateway_id_gateways'), type_='foreignkey')
            batch.drop_index(op.f(f'ix_{table}_gateway_id'))
            batch.drop_column('gateway_id')
            if table == 'connections':
                batch.drop_column('version')
    op.drop_table('gateways')
