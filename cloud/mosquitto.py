"""The shipped Mosquitto configuration (deploy/mosquitto/, installed as edgemeter.deploy): where
its templates are, the device user name they confine, and the ACL file rendered from them. Used
by the device registry (cloud.devices) and by the harness that starts brokers (tools.broker).
"""
from __future__ import annotations

import hashlib
import hmac
from importlib import resources
from pathlib import Path

DEPLOY = Path(str(resources.files("edgemeter.deploy")))
TEMPLATE = DEPLOY / "mosquitto" / "mosquitto.conf"
ACL_TEMPLATE = DEPLOY / "mosquitto" / "acl.example"
DEVICE_PATTERNS = ("pattern write em/%u/up/#", "pattern read em/%u/down/#")
UPLINK = "em/+/+/up/#"


class BrokerError(RuntimeError):
    """Mosquitto could not be started, reloaded or configured."""


def device_user(ws: int, dev: int) -> str:
    """The MQTT user name (and client id) of device dev of workspace ws: "<ws>/<dev>", e.g.
    "7/1042" (docs/protocol.md, topics). Mosquitto substitutes it whole for %u, slash included,
    so the ACL's `pattern write em/%u/up/#` becomes em/7/1042/up/#; digits and one slash only (a
    user name with + or # gets no pattern access at all)."""
    if type(ws) is not int or type(dev) is not int or ws < 0 or dev < 0:
        raise ValueError("workspace and device ids are unsigned integers")
    return "%d/%d" % (ws, dev)


def render_acl(template: Path = ACL_TEMPLATE) -> str:
    """The whole ACL file: the shipped template as it is (fixed roles and the device patterns;
    no per-device lines). Refuses a template without the two device patterns."""
    text = template.read_text()
    lines = {ln.strip() for ln in text.splitlines()}
    for need in DEVICE_PATTERNS:
        if need not in lines:
            raise BrokerError(f"{template}: no '{need}' line")
    return text


def share_group(password: str | None) -> str:
    """The raters' shared-subscription group: "raters-" and 16 hex digits of
    HMAC-SHA-256(rater password, "edgemeter share group"); plain "raters" for a broker without
    passwords (a test or bench broker). Mosquitto 2.0.11 grants every SUBSCRIBE (its acl_file
    is checked per delivered message) and deals a shared message to a group member before it
    checks that member's ACL, so any client in the group would swallow the uplink dealt to it.
    A group name only holders of the rater password can compute keeps devices out of it; every
    rater sharing the password computes the same name (deploy/mosquitto/README.md)."""
    if not password:
        return "raters"
    return "raters-" + hmac.new(password.encode(), b"edgemeter share group", hashlib.sha256).hexdigest()[:16]


def rater_subscription(password: str | None) -> str:
    """The raters' shared subscription to every device's uplink: $share/<share_group>/em/+/+/up/#."""
    return f"$share/{share_group(password)}/{UPLINK}"
