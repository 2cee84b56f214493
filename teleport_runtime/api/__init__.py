"""The contract between the auth service and its callers (nodes, proxies, tctl): the auth API.

- :mod:`~teleport_runtime.api.routes`: every endpoint (method, path, the roles it admits, its body).
- :mod:`~teleport_runtime.api.types`: the request and answer dataclasses.
- :mod:`~teleport_runtime.api.wire`: their JSON form, and the check of an incoming body.
- :mod:`~teleport_runtime.api.client`: the typed client, one method per endpoint.
- :mod:`~teleport_runtime.api.names`: names both sides share (server name, headers, keep-alive).

Importing this package loads neither the auth service nor the backend: the proxy and node depend on
the contract, never on ``auth/``.
"""
