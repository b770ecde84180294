"""purchases on the bill: the orders table and account_balances.purchases_ucny

Every savings plan and licence purchase becomes an order with its price and how it was paid
(firmware_py.billing P7). Plans and licences bought before this revision were paid up front
(the only way there was: billing.buy_plan said "paid up front, outside the balance"), so each
gets an order paid 'upfront' at its purchase time, and the account's paid_ucny and
purchases_ucny include them (what `edgemeter admin rebuild` recomputes from the entries).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 09:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('orders',
    sa.Column('id', ID, autoincrement=True, nullable=False),
    sa.Column('account_id', ID, nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('ref', sa.BigInteger(), nullable=False),
    sa.Column('price_ucny', sa.BigInteger(), nullable=False),
    sa.Column('paid_by', sa.String(length=16), nullable=False),
    sa.Column('at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_orders_account_id_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders')),
    sa.UniqueConstraint('kind', 'ref', name=op.f('uq_orders_kind_ref'))
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_orders_account_id'), ['account_id'], unique=False)
    with op.batch_alter_table('account_balances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('purchases_ucny', sa.BigInteger(), server_default='0', nullable=False))
    op.execute("INSERT INTO orders (account_id, kind, ref, price_ucny, paid_by, at) "
               "SELECT account_id, 'savings-plan', id, commit_ucny, 'upfront', bought_at FROM savings_plans "
               "ORDER BY id")
    op.execute("INSERT INTO orders (account_id, kind, ref, price_ucny, paid_by, at) "
               "SELECT w.account_id, 'license', p.id, p.price_ucny, 'upfront', p.purchased_at "
               "FROM license_purchases p JOIN workspaces w ON w.id = p.workspace_id ORDER BY p.id")
    total = "(SELECT COALESCE(SUM(o.price_ucny), 0) FROM orders o WHERE o.account_id = account_balances.account_id)"
    op.execute(f"UPDATE account_balances SET purchases_ucny = {total}, paid_ucny = paid_ucny + {total}")


def downgrade() -> None:
    total = ("(SELECT COALESCE(SUM(o.price_ucny), 0) FROM orders o WHERE o.account_id = account_balances.account_id"
             " AND o.paid_by = 'upfront')")
    back = ("(SELECT COALESCE(SUM(o.price_ucny), 0) FROM orders o WHERE o.account_id = account_balances.account_id"
            " AND o.paid_by = 'balance')")
    op.execute(f"UPDATE account_balances SET paid_ucny = paid_ucny - {total}, balance_ucny = balance_ucny + {back}")
    with op.batch_alter_table('account_balances', schema=None) as batch_op:
        batch_op.drop_column('purchases_ucny')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_orders_account_id'))
    op.drop_table('orders')
