"""price books an operator publishes: price_books.effective_at; invoice lines keep the book
version and the unit price apart (cloud/books.py)

Books stored before this revision are in force from the start (effective_at 0); stored
invoice lines were all rated by book 1 (the only one a store could hold without the
simulator) and get its version; their unit price is left 0 until the invoice is regenerated.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 09:30:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('price_books', schema=None) as batch_op:
        batch_op.add_column(sa.Column('effective_at', sa.BigInteger(), server_default='0', nullable=False))
    with op.batch_alter_table('invoice_lines', schema=None) as batch_op:
        batch_op.add_column(sa.Column('book_version', sa.BigInteger(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('unit_ucny', sa.BigInteger(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('invoice_lines', schema=None) as batch_op:
        batch_op.drop_column('unit_ucny')
        batch_op.drop_column('book_version')
    with op.batch_alter_table('price_books', schema=None) as batch_op:
        batch_op.drop_column('effective_at')
