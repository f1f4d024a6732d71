"""Beam files made reproducible where the compiler that made them is not: the ling target's OTP 17.

OTP 17's compiler knows no ``deterministic`` option (OTP 19 added it): every beam's compile-info
chunk (``CInf``, ``term_to_binary`` of a list) carries ``{time, {Y,Mo,D,H,Mi,S}}`` and
``{source, AbsolutePath}`` (lib/compiler/src/beam_asm.erl, ``build_attributes/4``, in OTP 17.5).
LING's railing copies that chunk into each module's ``.ling`` code (bc/ling_lib.erl, ``cinfo_chunk``),
so the image would differ with the build's time and the build host's directory. :func:`normalise`
removes those two entries and keeps the rest of the chunk byte for byte (the options, the compiler
version); nothing else in a beam depends on them (the ``vsn`` attribute is the MD5 of the code
chunks, not of ``CInf``).

The other inputs of a ling image are the toolchain's: OTP 17's own libraries and ``start.boot`` as
installed on the build host, and railing's translation, so images are byte-identical for the same
sources, settings and toolchain installation, not across installations.

Only the external term format that compile-info lists use is walked (tuples, lists, atoms, strings,
integers, floats, binaries, maps); anything else leaves the beam untouched.
"""

from __future__ import annotations

import struct
from pathlib import Path

DROPPED = (b"time", b"source")  # what OTP 17 adds that `deterministic` omits


class _Unknown(ValueError):
    pass


def normalise(data: bytes) -> bytes:
    """``data`` (a beam) without ``time`` and ``source`` in its compile info; unchanged when it has
    neither (e.g. compiled with ``deterministic``) or is not a beam."""
    if len(data) < 12 or data[:4] != b"FOR1" or data[8:12] != b"BEAM":
        return data
    out, pos, changed = [], 12, False
    while pos + 8 <= len(data):
        tag = data[pos : pos + 4]
        (size,) = struct.unpack(">I", data[pos + 4 : pos + 8])
        body = data[pos + 8 : pos + 8 + size]
        end = pos + 8 + ((size + 3) & ~3)
        if tag == b"CInf":
            new = _without(body)
            if new != body:
                changed = True
                out.append(tag + struct.pack(">I", len(new)) + new + b"\0" * (-len(new) % 4))
                pos = end
                continue
        out.append(data[pos:end])
        pos = end
    if not changed:
        return data
    chunks = b"".join(out)
    return b"FOR1" + struct.pack(">I", len(chunks) + 4) + b"BEAM" + chunks


def normalise_dir(ebin: Path) -> list[str]:
    """:func:`normalise` every ``*.beam`` in ``ebin`` in place; return the names of those changed."""
    changed = []
    for beam in sorted(ebin.glob("*.beam")):
        data = beam.read_bytes()
        new = normalise(data)
        if new != data:
            beam.write_bytes(new)
            changed.append(beam.name)
    return changed


def _without(term: bytes) -> bytes:
    """A ``term_to_binary`` list without its ``{time, _}`` and ``{source, _}`` elements."""
    try:
        if term[:1] != b"\x83":
            return term
        if term[1:2] == b"P":  # compressed: the compiler never writes CInf so
            return term
        if term[1] != 108:  # LIST_EXT
            return term
        (count,) = struct.unpack(">I", term[2:6])
        pos, kept = 6, []
        for _ in range(count):
            end = _skip(term, pos)
            if _key(term, pos) not in DROPPED:
                kept.append(term[pos:end])
            pos = end
        tail = term[pos : _skip(term, pos)]
        if _skip(term, pos) != len(term):
            return term
    except (_Unknown, IndexError, struct.error):
        return term
    if len(kept) == count:
        return term
    if not kept:
        return b"\x83j"  # []
    return b"\x83l" + struct.pack(">I", len(kept)) + b"".join(kept) + tail


def _key(term: bytes, pos: int) -> bytes | None:
    """The first element of the 2-tuple at ``pos`` when it is an atom, else None."""
    if term[pos] != 104 or term[pos + 1] != 2:  # SMALL_TUPLE_EXT of arity 2
        return None
    tag, at = term[pos + 2], pos + 3
    if tag in (100, 118):  # ATOM_EXT, ATOM_UTF8_EXT
        (n,) = struct.unpack(">H", term[at : at + 2])
        return term[at + 2 : at + 2 + n]
    if tag in (115, 119):  # SMALL_ATOM_EXT, SMALL_ATOM_UTF8_EXT
        return term[at + 1 : at + 1 + term[at]]
    return None


def _skip(term: bytes, pos: int) -> int:
    """The position after the encoded term at ``pos``."""
    tag = term[pos]
    if tag == 97:  # SMALL_INTEGER_EXT
        return pos + 2
    if tag == 98:  # INTEGER_EXT
        return pos + 5
    if tag == 70:  # NEW_FLOAT_EXT
        return pos + 9
    if tag == 99:  # FLOAT_EXT
        return pos + 32
    if tag in (100, 118, 107):  # ATOM_EXT, ATOM_UTF8_EXT, STRING_EXT: 2-byte length
        return pos + 3 + int.from_bytes(term[pos + 1 : pos + 3], "big")
    if tag in (115, 119):  # SMALL_ATOM_EXT, SMALL_ATOM_UTF8_EXT
        return pos + 2 + term[pos + 1]
    if tag == 106:  # NIL_EXT
        return pos + 1
    if tag == 109:  # BINARY_EXT
        return pos + 5 + int.from_bytes(term[pos + 1 : pos + 5], "big")
    if tag == 110:  # SMALL_BIG_EXT
        return pos + 3 + term[pos + 1]
    if tag == 111:  # LARGE_BIG_EXT
        return pos + 6 + int.from_bytes(term[pos + 1 : pos + 5], "big")
    if tag in (104, 105):  # SMALL_TUPLE_EXT, LARGE_TUPLE_EXT
        if tag == 104:
            arity, pos = term[pos + 1], pos + 2
        else:
            arity, pos = int.from_bytes(term[pos + 1 : pos + 5], "big"), pos + 5
        for _ in range(arity):
            pos = _skip(term, pos)
        return pos
    if tag == 108:  # LIST_EXT: elements, then the tail
        count, pos = int.from_bytes(term[pos + 1 : pos + 5], "big"), pos + 5
        for _ in range(count + 1):
            pos = _skip(term, pos)
        return pos
    if tag == 116:  # MAP_EXT
        arity, pos = int.from_bytes(term[pos + 1 : pos + 5], "big"), pos + 5
        for _ in range(2 * arity):
            pos = _skip(term, pos)
        return pos
    raise _Unknown(tag)
