"""RabbitMQ as edgemeter's clustered broker: users, permissions and the raters' queue.

Devices speak MQTT 3.1.1 to RabbitMQ's MQTT plugin exactly as they do to Mosquitto (user name
and client id "<ws>/<dev>", QoS 1, clean_session false). The plugin publishes to the topic
exchange amq.topic with the MQTT topic as routing key, '/' written '.' (em/7/1042/up/usage is
routed as em.7.1042.up.usage), and gives each persistent session a queue named
mqtt-subscription-<client id>qos1 (a quorum queue with `mqtt.durable_queue_type = quorum`, so it
survives the loss of a node). The raters consume one quorum queue, UP_QUEUE, bound to
amq.topic with UP_BINDING, as competing AMQP 0-9-1 consumers (cloud.amqp).

Rules (the same confinement as the Mosquitto ACL, deploy/mosquitto/acl.example):
 R1. A device user "<ws>/<dev>" may write only routing keys em.<ws>.<dev>.up.<kind> and bind
     (read) only em.<ws>.<dev>.down.<kind or #> on amq.topic (RabbitMQ topic permissions,
     checked on every publish and binding); its vhost permissions allow configuring, writing
     and reading only amq.topic and its own subscription queues. RabbitMQ's topic-permission
     variables ({username}, {client_id}) cannot express this: the user name holds a '/'
     where the routing key has a '.', so each device gets its own two patterns.
 R2. The rater user may declare and consume edgemeter.* queues, bind them with em.*.*.up.#,
     and write em.<ws>.<dev>.down.<kind> (any device's downlink), nothing else; the admin user
     is RabbitMQ's administrator.
 R3. Passwords are stored as RabbitMQ's rabbit_password_hashing_sha256 values:
     base64(salt || SHA-256(salt || UTF-8 password)) with a random 4-byte salt, so the broker
     checks them with its internal backend and no plugin.
 R4. A device registered while the fleet runs reaches the cluster at once: push_device() puts
     its user, vhost permissions and topic permissions of R1 through the management HTTP API
     of any node (RabbitMQ replicates users and permissions to every node); `edgemeter admin
     register-device --rabbitmq-api URL` calls it inside the registration's transaction, so a
     registration the broker refused is not kept either. The URL carries the admin user:
     http://admin:PASSWORD@HOST:15672 (or EDGEMETER_RABBITMQ_API).
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any

from edgemeter.cloud.mosquitto import device_user

UP_QUEUE = "edgemeter.up"
UP_BINDING = "em.*.*.up.#"
EXCHANGE = "amq.topic"
VHOST = "/"
HASHING = "rabbit_password_hashing_sha256"


def routing_key(topic: str) -> str:
    """The AMQP routing key RabbitMQ's MQTT plugin uses for an MQTT topic ('/' and '.' swapped)."""
    return topic.translate(_SWAP)


def mqtt_topic(key: str) -> str:
    """The MQTT topic of a routing key (the inverse of routing_key)."""
    return key.translate(_SWAP)


_SWAP = str.maketrans("/.", "./")


def password_hash(password: str, salt: bytes | None = None) -> str:
    """Rule R3: the password_hash value of a RabbitMQ user definition."""
    salt = salt if salt is not None else secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _user(name: str, password: str, tags: list[str]) -> dict[str, Any]:
    return {"name": name, "password_hash": password_hash(password), "hashing_algorithm": HASHING, "tags": tags}


def device_definitions(ws: int, dev: int, password: str) -> dict[str, list[dict[str, Any]]]:
    """Rule R1: the user, vhost permissions and topic permissions of one device."""
    user = device_user(ws, dev)
    queues = "mqtt-subscription-" + re.escape(user) + "qos[01]"
    own = rf"^({re.escape(EXCHANGE)}|{queues})$"
    return {
        "users": [_user(user, password, [])],
        "permissions": [{"user": user, "vhost": VHOST, "configure": f"^{queues}$", "write": own, "read": own}],
        "topic_permissions": [{"user": user, "vhost": VHOST, "exchange": EXCHANGE,
                               "write": rf"^em\.{ws}\.{dev}\.up\.[a-z]+$",
                               "read": rf"^em\.{ws}\.{dev}\.down\.([a-z]+|#)$"}],
    }


def definitions(devices: Iterable[tuple[int, int, str]], rater_password: str,
                admin_password: str) -> dict[str, Any]:
    """A definitions document (rabbitmqctl import_definitions) with the rater and admin users
    (rule R2) and every device of `devices` [(ws, dev, password)] (rule R1)."""
    out: dict[str, Any] = {
        "vhosts": [{"name": VHOST}],
        "users": [_user("rater", rater_password, []), _user("admin", admin_password, ["administrator"])],
        "permissions": [
            {"user": "rater", "vhost": VHOST, "configure": r"^edgemeter\..*$",
             "write": r"^(amq\.topic|edgemeter\..*)$", "read": r"^(amq\.topic|edgemeter\..*)$"},
            {"user": "admin", "vhost": VHOST, "configure": ".*", "write": ".*", "read": ".*"}],
        "topic_permissions": [
            {"user": "rater", "vhost": VHOST, "exchange": EXCHANGE,
             "write": r"^em\.[0-9]+\.[0-9]+\.down\.[a-z]+$", "read": r"^em\.\*\.\*\.up\.#$"}],
    }
    for ws, dev, pw in devices:
        for k, v in device_definitions(ws, dev, pw).items():
            out[k] += v
    return out


class RabbitMQError(RuntimeError):
    """The management API refused or could not be reached (one line naming the call)."""


def push_device(api: str, ws: int, dev: int, password: str, timeout: float = 10.0) -> dict[str, Any]:
    """Rule R4: create or update the device's user and permissions through the management API
    at `api` (http://USER:PASSWORD@HOST:PORT); returns what was put."""
    u = urllib.parse.urlsplit(api)
    if u.scheme not in ("http", "https") or not u.hostname or not u.username:
        raise RabbitMQError(f"the RabbitMQ management API is http(s)://USER:PASSWORD@HOST:PORT, got {_redact(api)!r}")
    base = f"{u.scheme}://{u.hostname}:{u.port or 15672}{u.path.rstrip('/')}/api"
    auth = base64.b64encode(f"{urllib.parse.unquote(u.username)}:{urllib.parse.unquote(u.password or '')}"
                            .encode()).decode()
    defs = device_definitions(ws, dev, password)
    user, perm, topic = defs["users"][0], defs["permissions"][0], defs["topic_permissions"][0]
    name, vhost = urllib.parse.quote(user["name"], safe=""), urllib.parse.quote(VHOST, safe="")
    calls = [(f"users/{name}", {k: user[k] for k in ("password_hash", "hashing_algorithm")} | {"tags": ""}),
             (f"permissions/{vhost}/{name}", {k: perm[k] for k in ("configure", "write", "read")}),
             (f"topic-permissions/{vhost}/{name}", {k: topic[k] for k in ("exchange", "write", "read")})]
    for path, body in calls:
        req = urllib.request.Request(f"{base}/{path}", data=json.dumps(body).encode(), method="PUT",
                                     headers={"Authorization": "Basic " + auth, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout):
                pass
        except urllib.error.HTTPError as e:
            raise RabbitMQError(f"RabbitMQ management API at {_redact(api)}: PUT {path} -> {e.code} "
                                f"{e.read()[:200].decode(errors='replace')}") from None
        except OSError as e:
            raise RabbitMQError(f"RabbitMQ management API at {_redact(api)} unreachable: {getattr(e, 'reason', e)}") from None
    return {"user": user["name"], "api": _redact(api)}


def _redact(api: str) -> str:
    """The URL with its password hidden."""
    u = urllib.parse.urlsplit(api)
    if u.password is None:
        return api
    return api.replace(f":{u.password}@", ":***@", 1)
