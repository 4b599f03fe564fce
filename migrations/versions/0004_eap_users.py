"""EAP: remote-access users (NT hashes only, encrypted), and the connections' EAP fields

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 11:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_METHOD = sa.Enum('eap-mschapv2', name='eapmethod', native_enum=False, length=16)


def upgrade() -> None:
    op.create_table(
        'eap_users',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('nt_hash', sa.LargeBinary(), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('version', sa.String(length=64), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_eap_users')),
        sa.UniqueConstraint('name', name=op.f('uq_eap_users_name')),
    )
    with op.batch_alter_table('connections') as batch:
        batch.add_column(sa.Column('local_auth', _METHOD, nullable=True))
        batch.add_column(sa.Column('remote_auth', _METHOD, nullable=True))
        batch.add_column(sa.Column('eap_id', sa.String(length=255), nullable=True))
        batch.add_column(sa.Column('eap_secret_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('dns', sa.JSON(), nullable=False, server_default='[]'))
        batch.create_foreign_key(op.f('fk_connections_eap_secret_id_secrets'), 'secrets',
                                 ['eap_secret_id'], ['id'], ondelete='RESTRICT')


def downgrade() -> None:
    with op.batch_alter_table('connections') as batch:
        batch.drop_constraint(op.f('fk_connections_eap_secret_id_secrets'),
                              type_='foreignkey')
        for column in ('dns', 'eap_secret_id', 'eap_id', 'remote_auth', 'local_auth'):
            batch.drop_column(column)
    op.drop_table('eap_users')
