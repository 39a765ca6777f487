"""One error tree for upstream calls, in httpx's shape: what can go wrong below HTTP semantics.

The router maps these onto its failure kinds (timeout, connection, bad response); nothing else escapes the
client (no builtin TimeoutError, zlib.error or UnicodeEncodeError).
"""

from __future__ import annotations


class TransportError(Exception):
    """An upstream call failed below HTTP semantics. The message never includes request data."""


class TimeoutException(TransportError):
    """A time limit ran out (connect, pool wait, or the answer's deadline / idle gap)."""


class ConnectTimeout(TimeoutException):
    pass


class ReadTimeout(TimeoutException):
    pass


class PoolTimeout(TimeoutException):
    pass


class NetworkError(TransportError):
    """The network failed: could not connect, or the connection broke mid-answer."""


class ConnectError(NetworkError):
    pass


class ReadError(NetworkError):
    pass


class ProtocolError(TransportError):
    """The bytes exchanged are not a valid HTTP/1.1 exchange."""


class RemoteProtocolError(ProtocolError):
    """The upstream's bytes are not a valid (or an acceptable) HTTP/1.1 response."""


class LocalProtocolError(ProtocolError):
    """The request itself cannot be written (e.g. a header that is not one latin-1 line)."""


class DecodingError(TransportError):
    """The body's Content-Encoding is unknown, corrupt, or decodes past the size cap."""
