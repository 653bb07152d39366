"""A minimal, bounds-checked reader of the protocol-buffers wire format (private).

Only what reading a Caffe ``.caffemodel`` needs: walk the fields of a message, read varints, and hand
length-delimited payloads back as ``(start, end)`` byte ranges into the caller's buffer, so that a
500 MB weight blob is never copied until its shape has been checked. Every length is checked against
the bytes that remain in the enclosing message before anything is read, so a damaged or hostile file
raises :class:`ProtobufError` instead of reading out of bounds or allocating what a length field claims.

Wire types (https://protobuf.dev/programming-guides/encoding/): 0 varint, 1 fixed 64-bit, 2
length-delimited, 5 fixed 32-bit; 3 and 4 (groups) are deprecated and rejected.
"""

from __future__ import annotations

import mmap
from typing import Iterator, NamedTuple, Union

__all__ = ["Field", "ProtobufError", "iter_fields", "read_varint"]

Buffer = Union[bytes, bytearray, memoryview, mmap.mmap]

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10  # a 64-bit varint takes at most 10 bytes


class ProtobufError(ValueError):
    """The bytes are not a well-formed protocol-buffers message (truncated, damaged or not protobuf)."""


class Field(NamedTuple):
    """One field of a message.

    ``value`` is the integer for a varint; for the other wire types it is unused (0) and the payload
    lies in ``buffer[start:end]`` (8 bytes for fixed64, 4 for fixed32, the payload for length-delimited).
    ``offset`` is where the field's tag starts, for error messages.
    """

    number: int
    wire_type: int
    value: int
    start: int
    end: int
    offset: int


def read_varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """Decode the varint at ``buf[pos:end]``; returns ``(value, position after it)``."""
    result = 0
    shift = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos >= end:
            raise ProtobufError(f"truncated varint at byte {pos - i} (the message ends at byte {end})")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise ProtobufError(f"varint longer than {_MAX_VARINT_BYTES} bytes at byte {pos - _MAX_VARINT_BYTES}")


def iter_fields(buf: Buffer, start: int = 0, end: int | None = None) -> Iterator[Field]:
    """The fields of the message in ``buf[start:end]``, in file order.

    Raises:
        ProtobufError: on a truncated field, a length that runs past ``end``, field number 0 or an
            unsupported wire type (groups).
    """
    end = len(buf) if end is None else end
    if not 0 <= start <= end <= len(buf):
        raise ProtobufError(f"message range [{start}, {end}) lies outside the {len(buf)}-byte buffer")
    pos = start
    while pos < end:
        offset = pos
        key, pos = read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ProtobufError(f"field number 0 at byte {offset} (not a protobuf message, or damaged)")
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos, end)
            yield Field(number, wire_type, value, pos, pos, offset)
            continue
        if wire_type == LENGTH_DELIMITED:
            length, pos = read_varint(buf, pos, end)
            size = length
        elif wire_type == FIXED64:
            size = 8
        elif wire_type == FIXED32:
            size = 4
        else:
            raise ProtobufError(f"unsupported wire type {wire_type} (field {number}) at byte {offset}")
        if size > end - pos:
            raise ProtobufError(
                f"field {number} at byte {offset} claims {size} bytes but only {end - pos} remain "
                "(the file is truncated or damaged)"
            )
        yield Field(number, wire_type, 0, pos, pos + size, offset)
        pos += size
