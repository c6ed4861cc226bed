"""The lifecycle the fakes share: an aiohttp server of the tests' own on a free 127.0.0.1 port, served by its
own event loop in a thread, started and stopped from the tests' (synchronous) code."""

from __future__ import annotations

import asyncio
import socket
import threading


class LoopbackServer:
    """Subclasses serve on the bound socket in ``_serve(sock)``, stop in ``_shutdown()`` and learn their port in
    ``_on_port(port)`` (to build their URLs)."""

    thread_name = "fake-server"
    port: int | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    def start(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._on_port(self.port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=self.thread_name, daemon=True)
        self._thread.start()
        self._run(self._serve(sock))
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            self._run(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
            self._loop = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _on_port(self, port: int) -> None:
        pass

    async def _serve(self, sock: socket.socket) -> None:
        raise NotImplementedError

    async def _shutdown(self) -> None:
        raise NotImplementedError
