"""Guards for the aiohttp internals the HTTP check relies on.

``probe/checks/http.py`` subclasses ``aiohttp.TCPConnector`` and overrides a private
method, reads three private attributes, and uses the response protocol class. None of
that is public API: an aiohttp release may rename or reshape it. Each test here names
one internal, so an upgrade that breaks the check fails here by name, not as a mystery
in the timing tests.
"""

from __future__ import annotations

import inspect

import aiohttp
import pytest
from aiohttp import client_proto


async def _connector() -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector()


def test_wrap_create_connection_is_the_connect_hook() -> None:
    """``TCPConnector._wrap_create_connection`` exists, is a coroutine function, and takes
    the keyword arguments the override reads: ``addr_infos``, ``req``, ``timeout`` and
    ``client_error``."""
    method = getattr(aiohttp.TCPConnector, "_wrap_create_connection", None)
    assert method is not None, "aiohttp.TCPConnector._wrap_create_connection is gone"
    assert inspect.iscoroutinefunction(method)
    params = inspect.signature(method).parameters
    for name in ("addr_infos", "req", "timeout", "client_error"):
        assert name in params, f"_wrap_create_connection lost its {name!r} argument"
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()), (
        "_wrap_create_connection no longer passes **kwargs (ssl, server_hostname)"
    )


@pytest.mark.parametrize(
    "name", ["_local_addr_infos", "_happy_eyeballs_delay", "_interleave", "_loop"]
)
async def test_connector_attribute(name: str) -> None:
    """Each private connector attribute the override passes to aiohappyeyeballs exists."""
    connector = await _connector()
    try:
        assert hasattr(connector, name), f"aiohttp.TCPConnector has no {name!r} any more"
    finally:
        await connector.close()


def test_response_handler_is_the_protocol() -> None:
    """``aiohttp.client_proto.ResponseHandler`` exists, takes the loop, and has
    ``data_received``: the check subclasses it to note the first response byte."""
    handler = getattr(client_proto, "ResponseHandler", None)
    assert handler is not None, "aiohttp.client_proto.ResponseHandler is gone"
    assert "loop" in inspect.signature(handler.__init__).parameters
    assert callable(getattr(handler, "data_received", None))


def test_async_resolver_resolve_signature() -> None:
    """``aiohttp.resolver.AsyncResolver.resolve(host, port, family)`` as the timed
    resolver overrides it, and ``close`` exists."""
    from aiohttp.resolver import AsyncResolver

    params = list(inspect.signature(AsyncResolver.resolve).parameters)
    assert params[:4] == ["self", "host", "port", "family"], params
    assert inspect.iscoroutinefunction(AsyncResolver.close)
