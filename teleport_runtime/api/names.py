"""Names both sides of the auth API agree on: the server name the API's certificate is checked
under, the role it carries, the headers a proxy forwards, and the keep-alive of connections."""

from __future__ import annotations

#: The TLS server name of the auth API: in every auth server certificate, so agents joining by
#: IP address still verify a name.
API_SERVER_NAME = "teleport.cluster.local"
#: The system role the auth API's certificate carries (checked by the client in the handshake).
AUTH_ROLE = "Auth"
#: The proxy forwards the user certificate a request came with (base64 DER), and the client's
#: address, so the auth service decides for the user (recordings, login, sign-up).
HEADER_FORWARDED_USER = "X-Teleport-User-Cert"
HEADER_FORWARDED_ADDR = "X-Teleport-Remote-Addr"
#: Seconds an idle connection to the auth service is kept for the next call: longer than the
#: longest heartbeat interval (60 s), so an agent holds one connection across its heartbeats, as
#: the reference's agents do, instead of a new TLS handshake for each.
KEEPALIVE_SECONDS = 150.0
#: The server closes idle connections after twice the agents' keep-alive, so an agent is always
#: the side that closes (a request never meets a connection the server is closing).
SERVER_KEEPALIVE_SECONDS = 2 * KEEPALIVE_SECONDS
#: Largest request body the API reads (JSON bodies; recordings are uploaded raw, in pieces).
MAX_BODY_BYTES = 4 * 1024 * 1024
#: Largest body of one ``node-sync`` recording stream append.
MAX_STREAM_CHUNK = 1024 * 1024
#: The longest an agent's CA watch is held open.
MAX_WATCH_SECONDS = 60.0

#: Reverse tunnels and the proxy's one-port (multiplex) mode share these names between the proxy
#: and the agents that dial it.
#: TLS ALPN protocol of a reverse tunnel carried on the proxy's web port.
ALPN_REVERSE_TUNNEL = "teleport-reversetunnel"
#: The target a tunnel node asks the proxy for when it wants the auth API (never a real host).
TUNNEL_AUTH_TARGET = "@remote-auth-server"
#: What listings show in the address column of a node reached through its reverse tunnel.
TUNNEL_ADDR_LABEL = "⟵ Tunnel"
#: The forwarding a tunnel node asks the proxy for (``tcpip-forward``): the proxy opens
#: ``forwarded-tcpip`` channels to this host and port, which the node hands to its own SSH server
#: (no real address: nothing is bound on either side).
TUNNEL_NODE_HOST = "@local-node"
TUNNEL_NODE_PORT = 3022
#: The proxy's web endpoint a node joins through: a websocket relaying raw bytes to an auth
#: server (the node's TLS to the auth API runs inside it).
CONNECT_AUTH_PATH = "/webapi/connect/auth"
