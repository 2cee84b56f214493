"""The proxy: SSH routing to registered nodes on 3023, the web API (login, discovery) on 3080."""

from teleport_runtime.proxy.service import ProxyService

__all__ = ["ProxyService"]
