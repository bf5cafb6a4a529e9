"""A request body as byte pieces, each handed over as soon as it arrives.

Phase 2 must queue children as lines arrive, so the body cannot be read with
`read(n)` or `readline()`: WSGI servers block those until n bytes (gunicorn: 1 KiB)
have come in, which on a slow stream holds back lines already received. gunicorn
de-chunks `Transfer-Encoding: chunked` (Django alone would see an empty body there);
its readers are consumed piece by piece. Other servers: `read1` where the stream has
it (wsgiref), else blocking 64 KiB reads.
"""

import io
from collections.abc import Callable, Iterator
from typing import Any

from rest_framework.request import Request

from jobs.api import limits

PIECE = 64 * 1024


def body_pieces(request: Request) -> Iterator[bytes]:
    raw = request.META.get("wsgi.input")
    chunked = limits.is_chunked(request)
    length = None if chunked else (limits.content_length(request) or 0)
    if raw is not None and type(getattr(raw, "reader", None)).__name__ in ("ChunkedReader", "LengthReader"):
        return _gunicorn_pieces(raw)
    if chunked:
        return _read_all(raw.read) if raw is not None else iter(())
    if hasattr(raw, "read1"):
        return _read1(raw, length or 0)
    return _read_all(lambda n: request._request.read(n))


def _gunicorn_pieces(body: Any) -> Iterator[bytes]:
    try:
        if body.buf.tell():
            data, body.buf = body.buf.getvalue(), io.BytesIO()
            yield data
        reader = body.reader
        if type(reader).__name__ == "ChunkedReader":
            if reader.buf.tell():
                data, reader.buf = reader.buf.getvalue(), io.BytesIO()
                yield data
            if reader.parser:
                yield from reader.parser  # each chunk (or part of one) as it arrives
                reader.parser = None
            return
        while reader.length > 0:
            data = reader.unreader.read(None, read_ahead=reader.length)  # what one recv() brought
            if not data:
                return
            if len(data) > reader.length:
                reader.unreader.unread(data[reader.length:])
                data = data[: reader.length]
            reader.length -= len(data)
            yield data
    except Exception:  # the client went away or broke the framing: the stream ends here
        body.failed = True
        return


def _read1(raw: Any, length: int) -> Iterator[bytes]:
    remaining = length
    while remaining > 0:
        data = raw.read1(min(PIECE, remaining))
        if not data:
            return
        remaining -= len(data)
        yield data


def _read_all(read: Callable[[int], bytes]) -> Iterator[bytes]:
    while True:
        data = read(PIECE)
        if not data:
            return
        yield data


def client_socket(request: Request) -> Any:
    """The connection's socket, to see whether the client has sent more yet:
    gunicorn exposes it; wsgiref (runserver, live_server) only through its reader."""
    sock = request.META.get("gunicorn.socket")
    if sock is None:
        sock = getattr(getattr(request.META.get("wsgi.input"), "raw", None), "_sock", None)
    return sock
