"""device MQTT user names "d<dev>" -> "<ws>/<dev>" (cloud/devices.py rule D1)

The broker ACL became two pattern lines on %u (deploy/mosquitto/acl.example), which confine
a device to em/<ws>/<dev>/ only when its user name is "<ws>/<dev>". Devices registered before
keep their password (the hash does not depend on the name) but must log in with the new user
name and client id; `edgemeter admin sync-mosquitto` then rewrites the broker's password file.
Data only: the schema does not change.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 12:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

devices = sa.table('devices', sa.column('id', sa.BigInteger), sa.column('workspace_id', sa.BigInteger),
                   sa.column('username', sa.String))
OLD = sa.literal('d') + sa.cast(devices.c.id, sa.String)
NEW = sa.cast(devices.c.workspace_id, sa.String) + sa.literal('/') + sa.cast(devices.c.id, sa.String)


def upgrade() -> None:
    op.execute(devices.update().where(devices.c.username == OLD).values(username=NEW))


def downgrade() -> None:
    op.execute(devices.update().where(devices.c.username == NEW).values(username=OLD))
