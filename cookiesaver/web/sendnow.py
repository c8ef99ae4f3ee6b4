"""Send a small response straight to a TCP socket when nothing is queued before it.

C{transport.write} on a Twisted TCP connection never sends: it appends to
the transport's buffer and registers the socket for writing (one
C{epoll_ctl}); the reactor then calls C{doWrite} on its next pass, which
sends and unregisters (another C{epoll_ctl}). For a keep-alive pixel hit
that is two system calls and a reactor dispatch per response (write plus
doWrite: 11% of py-spy's samples under wrk, the send itself about half of
that). asyncio and nginx try the
send first and only buffer what the kernel did not take; this does the
same for the fast path's responses.

It relies on attributes of L{twisted.internet.abstract.FileDescriptor} that
are not public API (C{dataBuffer}, C{_tempDataLen}, C{_writeDisconnected}),
so it only acts on the exact transport class it knows
(L{twisted.internet.tcp.Server}, without C{startTLS}) and
tests/test_sendnow.py pins those attributes: a Twisted upgrade that changes
them fails that test instead of silently reordering bytes. Anything else
(TLS, a UNIX socket, bytes already queued, a closing connection) goes
through C{transport.write} unchanged.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


def can_send_now(transport: Any) -> bool:
    """True when C{transport} is a plain TCP server connection this module knows how to write to directly."""
    return type(transport) is tcp.Server and not getattr(transport, "TLS", False)


def send_now(transport: Any, data: bytes) -> None:
    """
    Write C{data} to a transport L{can_send_now} accepted, in order: straight to the socket when it holds nothing
    unsent, the rest (or all of it, on any doubt) through C{transport.write}.

    Errors are not handled here: on any C{OSError} the data goes to
    C{transport.write}, whose next C{doWrite} meets the same error and closes
    the connection the usual way.
    """
    if transport.connected and not transport.disconnecting and not transport._writeDisconnected and not transport.dataBuffer and not transport._tempDataLen:
        try:
            sent = transport.socket.send(data)
        except OSError:  # EAGAIN (kernel buffer full), or an error doWrite will report
            sent = 0
        if sent >= len(data):
            return
        data = data[sent:]
    transport.write(data)
