"""crls: certificate revocation lists of our CAs; connections: revocation policy

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-07 11:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('crls',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('ca_id', sa.Integer(), nullable=False),
    sa.Column('pem', sa.Text(), nullable=False),
    sa.Column('issuer', sa.Text(), nullable=False),
    sa.Column('this_update', sa.DateTime(timezone=True), nullable=False),
    sa.Column('next_update', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['ca_id'], ['cas.id'], name=op.f('fk_crls_ca_id_cas'),
                            ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_crls')),
    sa.UniqueConstraint('name', name=op.f('uq_crls_name'))
    )
    with op.batch_alter_table('crls') as batch:
        batch.create_index(batch.f('ix_crls_ca_id'), ['ca_id'], unique=False)
    with op.batch_alter_table('connections') as batch:
        batch.add_column(sa.Column('revocation', sa.Enum(
            'strict', 'ifuri', 'relaxed', 'none', name='revocation', native_enum=False,
            length=16), nullable=False, server_default='relaxed'))


def downgrade() -> None:
    with op.batch_alter_table('connections') as batch:
        batch.drop_column('revocation')
    with op.batch_alter_table('crls') as batch:
        batch.drop_index(batch.f('ix_crls_ca_id'))
    op.drop_table('crls')
