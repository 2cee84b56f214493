"""The auth API's contract (``teleport_runtime/api/``): the server is built from the one route
table, the client has a method for each endpoint and no path is written elsewhere, every body
has one JSON form, and the typed client works against a real auth server."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import cast

import pytest

import teleport_runtime
from teleport_runtime.api import client as client_module
from teleport_runtime.api import routes
from teleport_runtime.api.routes import ENDPOINTS, Endpoint
from teleport_runtime.api.types import (
    ActiveSession,
    AuthorityState,
    HeartbeatReport,
    IssuedIdentity,
    JoinRequest,
    PublicCAs,
    RotationView,
    TokenRequest,
    UserAdd,
    UserCerts,
    UserUpdate,
)
from teleport_runtime.api.wire import Message
from teleport_runtime.auth.api import AuthAPI
from teleport_runtime.auth.service import AuthService
from teleport_runtime.errors import AccessDenied, BadParameter
from teleport_runtime.identity import Identity
from tests.proxy.harness import LocalCluster

_JOIN = {"token": "0123456789abcdef", "role": "node", "host_uuid": "6f1c", "nodename": "n1",
         "ssh_public_key": "ssh-ed25519 AAAA", "tls_public_key": "-----BEGIN PUBLIC KEY-----"}


def _api() -> AuthAPI:
    return AuthAPI(cast(AuthService, None))  # the routes need no service


def test_every_endpoint_is_served_by_one_handler() -> None:
    served = [endpoint for endpoint, _ in _api().routes()]
    assert len(set(served)) == len(served)
    assert set(served) == set(ENDPOINTS)


def test_the_server_routes_are_built_from_the_table() -> None:
    app = _api().app()
    built = {(route.method, route.resource.canonical) for route in app.router.routes() if route.resource}
    assert built == {(e.method, e.path) for e in ENDPOINTS}


def test_the_client_calls_every_endpoint() -> None:
    source = inspect.getsource(client_module)
    names = [name for name, value in vars(routes).items() if isinstance(value, Endpoint)]
    assert [name for name in names if f"r.{name}" not in source] == []


def test_no_request_path_is_written_outside_the_contract_package() -> None:
    root = Path(teleport_runtime.__file__).parent
    found = [
        f"{path.relative_to(root)}:{number}"
        for path in sorted(root.rglob("*.py")) if path.relative_to(root).parts[0] != "api"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r'f?"/v1/', line)
    ]
    assert found == []


@pytest.mark.parametrize("message", [
    JoinRequest.from_json({**_JOIN, "addresses": ["10.0.0.5"]}),
    HeartbeatReport(hostname="n1", addr="10.0.0.5:3022", labels={"env": "prod"}, rotation={"host": "init"}),
    UserUpdate(logins=("root",)),
    UserAdd(name="alice", roles=("access",)),
    TokenRequest(roles=("node", "proxy"), ttl=300),
    UserCerts(username="alice", cluster="c", ssh_cert="cert", roles=("access",)),
    IssuedIdentity(cluster="c", ssh_cert="s", tls_cert="t", host_ca_certs=("pem",)),
    AuthorityState(revision="1.2", rotation={"host": RotationView(), "user": RotationView(phase="init")},
                   cas=PublicCAs(cluster="c", host_ca_keys=("k",)), signing={"host_ca_cert": "pem"}),
    ActiveSession({"id": "s1", "user": "alice", "cols": 80}),
], ids=lambda m: type(m).__name__)
def test_the_json_form_round_trips(message: Message) -> None:
    assert type(message).from_json(message.to_json()) == message


def test_optional_answers_are_left_out_until_set() -> None:
    assert "tls_cert" not in UserCerts(username="a", cluster="c", ssh_cert="s").to_json()
    assert UserUpdate().to_json() == {"roles": None, "logins": None}  # None: leave as it is


def test_a_body_is_checked_where_it_enters_naming_the_endpoint_the_field_and_an_example() -> None:
    what = str(routes.JOIN)
    with pytest.raises(BadParameter, match=r"POST /v1/join: 'addresses' is a string: expected a list of strings"):
        JoinRequest.from_json({**_JOIN, "addresses": "10.0.0.5"}, what)
    with pytest.raises(BadParameter, match=r"POST /v1/join: 'token' is required"):
        JoinRequest.from_json({k: v for k, v in _JOIN.items() if k != "token"}, what)
    with pytest.raises(BadParameter, match="expected a JSON object"):
        JoinRequest.from_json(["not", "an", "object"], what)


async def test_the_typed_client_against_the_auth_server(local_cluster: LocalCluster) -> None:
    admin = local_cluster.client(Identity.load(await local_cluster.auth.write_admin_identity()))
    status = await admin.status()
    assert status.cluster == local_cluster.cluster and list(status.ca_pins) == await local_cluster.pins()
    assert {ca.type for ca in status.cas} == {"host", "user"}

    created = await admin.create_token(TokenRequest(roles=("node",), ttl="5m"))
    assert created.roles == ("node",) and created.ca_pins == status.ca_pins
    assert created.token in {t.token for t in await admin.tokens()}
    assert (await admin.delete_token(created.token)).deleted == created.token

    invite = await admin.add_user(UserAdd(name="alice", roles=("access",), logins=("alice",)))
    assert invite.user == "alice" and invite.token
    updated = await admin.update_user("alice", UserUpdate(logins=("root",)))
    assert (updated.roles, updated.logins, updated.status) == (("access",), ("root",), "pending signup")
    assert "alice" in {u.name for u in await admin.users()}
    assert (await admin.delete_user("alice")).deleted == "alice"
    assert {"access", "auditor"} <= {r.name for r in await admin.roles()}

    identity, host_uuid = await local_cluster.join("node", "node1", ["127.0.0.1"])
    node = local_cluster.client(identity)
    answer = await node.heartbeat(HeartbeatReport(hostname="node1", addr="127.0.0.1:3022", labels={"env": "test"}))
    assert answer.heartbeat_interval > 0
    [record] = await admin.nodes()
    assert (record.id, record.hostname, record.addr, record.labels) == (host_uuid, "node1", "127.0.0.1:3022",
                                                                        {"env": "test"})
    state = await node.watch_authorities()
    assert state.rotation["host"].phase == "standby" and state.cas.cluster == local_cluster.cluster
    assert state.signing["host_ca_cert"] in state.cas.host_ca_certs
    with pytest.raises(AccessDenied, match="not allowed for role Node"):  # the table's roles, enforced
        await node.status()
    removed = await admin.remove_node("node1")
    assert (removed.removed, removed.nodename) == (host_uuid, "node1")
