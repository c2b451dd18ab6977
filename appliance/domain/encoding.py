"""The structure of an encoded data set (PS3.5 section 7): element headers, and the tree of
elements, sequences and items they make, read without decoding a value. The listener walks
received bytes with it; the result gate holds what it wrote to what it validated."""

import mmap
import struct

UNDEFINED_LENGTH = 0xFFFFFFFF
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
)
ITEM_GROUP = 0xFFFE
ITEM = 0xFFFEE000  # a sequence item; in an element tree, the opening of one
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD


# Encoded data set bytes: in memory, or a large data set's file mapped read-only.
Encoded = bytes | mmap.mmap


class MalformedEncoding(ValueError):
    """Bytes that are not a whole encoding of a data set; the message says where."""


def header(data: Encoded, pos: int, implicit: bool, little: bool) -> tuple[int, bytes, int, int]:
    """The element header at `pos`: its tag, VR (empty when implicit or an item), value
    length, and where its value begins."""
    order = "<" if little else ">"
    size = len(data)
    if pos + 8 > size:
        raise MalformedEncoding(f"data set is truncated in an element header at byte {pos}")
    group, element = struct.unpack_from(order + "HH", data, pos)
    if group == ITEM_GROUP or implicit:
        (length,) = struct.unpack_from(order + "L", data, pos + 4)
        return group << 16 | element, b"", length, pos + 8
    vr = bytes(data[pos + 4 : pos + 6])
    if vr in LONG_VRS:
        if pos + 12 > size:
            raise MalformedEncoding(f"data set is truncated in an element header at byte {pos}")
        (length,) = struct.unpack_from(order + "L", data, pos + 8)
        return group << 16 | element, vr, length, pos + 12
    (length,) = struct.unpack_from(order + "H", data, pos + 6)
    return group << 16 | element, vr, length, pos + 8


def value_end(data: Encoded, pos: int, length: int) -> int:
    if pos + length > len(data):
        raise MalformedEncoding(
            f"data set is truncated: an element needs {pos + length} bytes, received {len(data)}"
        )
    return pos + length


def element_tree(data: Encoded, start: int = 0) -> list[tuple[int, int, str]]:
    """Every element of the explicit VR little endian data set in `data` from `start`, depth
    first, as (depth, tag, VR), each sequence item opened by (depth, ITEM, ""): the structure
    the bytes hold. Every length must stay inside its parent and the data set end exactly at
    the end of `data`, else MalformedEncoding."""
    tree: list[tuple[int, int, str]] = []
    end, closed_by = _tree(data, start, len(data), 0, tree)
    if closed_by is not None or end != len(data):
        raise MalformedEncoding(f"data set has a stray delimiter or trailing bytes at byte {end}")
    return tree


def _tree(
    data: Encoded, pos: int, end: int, depth: int, tree: list[tuple[int, int, str]]
) -> tuple[int, int | None]:
    """Elements from `pos` up to `end` or a delimiter; where they stop, and the delimiter."""
    while pos < end:
        tag, vr, length, start = header(data, pos, False, True)
        if tag in (ITEM_DELIMITER, SEQUENCE_DELIMITER):
            return start, tag
        if tag == ITEM:
            raise MalformedEncoding(f"item outside a sequence at byte {pos}")
        tree.append((depth, tag, vr.decode("ascii", errors="replace")))
        undefined = length == UNDEFINED_LENGTH
        stop = end if undefined else value_end(data, start, length)
        if stop > end:
            raise MalformedEncoding(f"element at byte {pos} runs past its parent")
        if vr == b"SQ":
            pos = _items(data, start, stop, undefined, depth + 1, tree)
        elif undefined:  # encapsulated pixel data: fragments, not elements
            pos = _items(data, start, stop, True, depth + 1, None)
        else:
            pos = stop
    return pos, None


def _items(
    data: Encoded,
    pos: int,
    end: int,
    undefined: bool,
    depth: int,
    tree: list[tuple[int, int, str]] | None,
) -> int:
    """The items of a sequence (or fragments, when `tree` is None) from `pos`: up to `end`,
    or to the sequence delimiter when its length is `undefined`."""
    while pos < end:
        tag, _, length, start = header(data, pos, False, True)
        if tag == SEQUENCE_DELIMITER and undefined:
            return start
        if tag != ITEM:
            raise MalformedEncoding(f"expected a sequence item at byte {pos}")
        if tree is None:
            pos = value_end(data, start, length)
            continue
        tree.append((depth, ITEM, ""))
        if length == UNDEFINED_LENGTH:
            pos, closed_by = _tree(data, start, end, depth, tree)
            if closed_by != ITEM_DELIMITER:
                raise MalformedEncoding(f"item at byte {start} is not closed")
        else:
            stop = value_end(data, start, length)
            pos, closed_by = _tree(data, start, stop, depth, tree)
            if closed_by is not None or pos != stop:
                raise MalformedEncoding(f"item at byte {start} does not end at its length")
    if undefined:
        raise MalformedEncoding("sequence is not closed by its delimiter")
    if pos != end:
        raise MalformedEncoding(f"sequence runs past its length at byte {pos}")
    return pos
