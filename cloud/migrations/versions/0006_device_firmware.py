"""devices.firmware: the firmware version each device last reported (protocol message FIRMWARE)

Devices registered before this revision show "" until they next connect.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 18:20:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('firmware', sa.String(length=64), server_default='', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('firmware')
