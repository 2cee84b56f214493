"""The diagnostic endpoint (``--diag-addr``): /healthz, /readyz and /metrics."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web


class DiagServer:
    """Plain HTTP on loopback for probes: health while the process runs, readiness once every
    service is up, and Prometheus metrics from ``metrics()``."""

    def __init__(self, ready: Callable[[], bool], metrics: Callable[[], dict[str, float]]) -> None:
        self.ready = ready
        self.metrics = metrics
        self.runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port, reuse_address=True).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self.ready():
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "starting"}, status=503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        lines = []
        for name, value in sorted(self.metrics().items()):
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {value}")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")
