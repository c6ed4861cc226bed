"""``ClientThread`` (see ``fake_discord.py``): runs a real discord.py client on its own loop in a daemon thread,
so that synchronous tests can start it against the fake, act as the bot and stop it."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading


class ClientThread:
    """Runs a discord.py client (or a factory making one inside the loop) on its own loop in a daemon thread.

    ``start()`` logs in (setup_hook runs), connects and waits for on_ready; ``call(fn, *args)`` runs a
    coroutine function in the client's loop and returns its result; ``stop()`` closes the client and joins the
    thread.  ``errors`` collects ERROR log records of the ``discord`` logger (exceptions in commands, views,
    event handlers), so a test can assert none happened.
    """

    def __init__(self, client, token: str, name: str = "discord-client"):
        self._client_or_factory, self.token, self.name = client, token, name
        self.client = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.errors: list[logging.LogRecord] = []
        self._ready = threading.Event()
        self._handler = _ListHandler(self.errors)

    def start(self, timeout: float = 15) -> ClientThread:
        logging.getLogger("discord").addHandler(self._handler)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise AssertionError(f"discord client not ready after {timeout}s")
        if self.error is not None:
            raise self.error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported through start()/stop()
            self.error = self.error or exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        import discord

        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        target = self._client_or_factory
        self.client = client = target if isinstance(target, discord.Client) else target()
        connect = None
        try:
            await client.login(self.token)
            connect = asyncio.create_task(client.connect())
            ready = asyncio.create_task(client.wait_until_ready())
            await asyncio.wait({connect, ready}, return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                ready.cancel()
                connect.result()  # raises why it ended
                raise RuntimeError("discord client stopped before it was ready")
            self._ready.set()
            stop = asyncio.create_task(self._stop.wait())
            await asyncio.wait({connect, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if connect.done():
                connect.result()
        except BaseException as exc:
            self.error = exc
        finally:
            # close from inside the loop: a close() sent from another thread gets cancelled by asyncio.run's
            # cleanup as soon as connect() returns, leaving the HTTP session open
            await client.close()
            if connect is not None and not connect.done():
                await asyncio.wait_for(connect, 10)

    def call(self, fn, *args, timeout: float = 10, **kwargs):
        """Run ``fn(*args, **kwargs)`` in the client's loop (awaiting it if it returns an awaitable); its result.

        ``fn`` itself is called inside the loop, so ``call(lambda: channel.send(view=MyView()))`` builds the
        view there (a View built outside a running loop never dispatches its callbacks)."""
        async def inside():
            result = fn(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return asyncio.run_coroutine_threadsafe(inside(), self.loop).result(timeout)

    def stop(self, timeout: float = 10) -> None:
        try:
            if self._thread.is_alive() and getattr(self, "_stop", None) is not None:
                with contextlib.suppress(RuntimeError):  # loop already closed
                    self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "discord client thread did not stop"
        finally:
            logging.getLogger("discord").removeHandler(self._handler)

    def __enter__(self) -> ClientThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _ListHandler(logging.Handler):
    def __init__(self, sink: list):
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record)
