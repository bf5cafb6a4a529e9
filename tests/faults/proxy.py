"""A small asyncio TCP proxy, run in a thread, that can cut, stall or reset the
connections it carries (to Redis or Postgres) on a test's command.

- `stall()`: bytes stop flowing both ways (connections stay open) until `resume()`.
- `cut()`: every open connection is reset (RST), and new ones are refused until
  `resume()`.
- `reset()`: every open connection is reset; new ones are accepted at once.
"""

import asyncio
import socket
import struct
import threading
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._stalled = False
        self._refusing = False
        self.accepted = 0  # connections carried so far (reconnects show here)
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._run, name=f"proxy-{self.port}", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    # --- commands (from the test's thread) -------------------------------------------

    def stall(self) -> None:
        self._stalled = True

    def resume(self) -> None:
        self._stalled = False
        self._refusing = False

    def cut(self) -> None:
        self._refusing = True
        self._call(self._abort_all)

    def reset(self) -> None:
        self._call(self._abort_all)

    def close(self) -> None:
        self._refusing = True
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    @property
    def connections(self) -> int:
        return len(self._writers) // 2

    # --- the loop ----------------------------------------------------------------------

    def _call(self, fn: Any) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        )
        self._ready.set()
        self._loop.run_forever()

    async def _shutdown(self) -> None:
        self._abort_all()
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                try:  # linger 0: close sends RST, not FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            await self._carry(client_r, client_w)
        except asyncio.CancelledError:
            pass  # shutting down: end quietly (asyncio logs a cancelled handler as an error)

    async def _carry(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._refusing:
            client_w.transport.abort()
            return
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._writers.update((client_w, upstream_w))
        self.accepted += 1
        await asyncio.gather(self._pipe(client_r, upstream_w), self._pipe(upstream_r, client_w))
        for w in (client_w, upstream_w):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                while self._stalled:
                    await asyncio.sleep(0.02)
                if writer not in self._writers:
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()
