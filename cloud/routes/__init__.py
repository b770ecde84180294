"""The HTTP API's routers, one module per resource; cloud.api.create_app mounts ROUTERS.

    overview    /me, /overview
    accounts    /accounts, /accounts/{id}
    invoices    /accounts/{id}/invoices[/{month}]
    workspaces  /workspaces, /pools, /workspaces/{id}/pool
    licenses    /licenses, /licenses/activations
    fleet       /devices, /leases
    usage       /usage/items, /usage/devices, /usage/time
    operations  /alerts, /dead-letters, /mismatches, /healthz
    live        /changes, /events (Server-Sent Events)

Each route is a plain function of its parameters and the dependencies in routes.common
(`Who`, `Conn`, `Ctx`); the rules it follows are cloud.api's H1-H7.
"""
from edgemeter.cloud.routes import (accounts, fleet, invoices, licenses, live, operations, overview, usage,
                                    workspaces)

ROUTERS = [m.router for m in (overview, accounts, invoices, workspaces, licenses, fleet, usage, operations, live)]
