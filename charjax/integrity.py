"""Checkpoint integrity: digests written with every checkpoint and checked on every restore.

Orbax's atomic rename protects against a killed process, not against a file damaged after the
rename (a machine crash, an unfinished sync or copy, bad storage). So each record carries a
SHA-256 of each part of the state it was saved with (`params`, `opt_state`, ...: over every
leaf's dtype, shape and bytes, in tree order) and of the record itself; a restore recomputes
them. A mismatch, or a file that cannot be read at all, is a `Damaged` checkpoint, named in one
line, never silently wrong parameters.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os

import jax
import numpy as np

from charjax.errors import CharjaxError
from charjax.orbax_errors import Unread, chain, os_error

DIGESTS = "digests"  # record key: {part: sha256} of the state's parts
RECORD = "record_sha256"  # record key: sha256 of the record without this key
SEALED_FROM = 3  # records of this format and later always carry their digests


class Damaged(CharjaxError):
    """A checkpoint whose files cannot be read, or whose contents are not what was written."""


def unreadable(where: str, error: BaseException) -> Damaged:
    """`Damaged` for a checkpoint whose files orbax or TensorStore could not read, in the user's
    words: which part (its record, or its params, opt_state, ... arrays) and how (a file
    missing, cut short, undecodable or refused by the OS). The library's own message (a
    TensorStore spec of many lines) stays in the chain of causes, which --debug shows."""
    return Damaged(f"{where} is damaged: {_what_failed(error)}")


def _what_failed(error: BaseException) -> str:
    """'a file of its params arrays is missing or cut short', 'its record file is missing',
    'a file of its arrays cannot be read (Input/output error)', ... from the messages in
    `error`'s chain of causes."""
    causes, said = chain(error), Unread(error)
    decoding = any(isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)) for e in causes)
    if said.record or (decoding and said.part is None):
        holder = "its record file"
    else:
        holder = f"a file of its {said.part} arrays" if said.part else "a file of its arrays"
    reason = os_error(error)
    missing = reason == os.strerror(errno.ENOENT) or said.missing
    if missing or any(isinstance(e, FileNotFoundError) for e in causes):
        return f"{holder} is missing"
    if said.cut:
        return f"{holder} is missing or cut short"
    if reason is not None:
        return f"{holder} cannot be read ({reason})"
    if holder == "its record file":
        return f"{holder} is not valid JSON"
    return f"{holder} cannot be decoded (its bytes are not what was written)"


def _parts(tree) -> dict:
    """The top-level parts of a state: a NamedTuple's fields or a dict's keys (else one)."""
    if hasattr(tree, "_fields"):
        return {name: getattr(tree, name) for name in tree._fields}
    if isinstance(tree, dict):
        return dict(tree)
    return {"state": tree}


def tree_digest(tree) -> str:
    """SHA-256 over every leaf's dtype, shape and bytes, in tree order (this process's copy
    of each array: the state is replicated)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)
        value = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{value.dtype.str}|{value.shape}|".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def state_digests(state) -> dict[str, str]:
    """{part: digest} of a state's top-level parts (see `tree_digest`)."""
    return {name: tree_digest(part) for name, part in _parts(state).items()}


def _record_digest(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != RECORD}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def sealed(record: dict, state) -> dict:
    """`record` with the digests of `state` and of itself added (what a save writes)."""
    record = {**record, DIGESTS: state_digests(state)}
    return {**record, RECORD: _record_digest(record)}


def check_record(record, where: str) -> dict:
    """The record as written, or `Damaged` if it is not a dict whose own digest matches.
    Records of formats before digests existed pass unchecked."""
    if not isinstance(record, dict):
        raise Damaged(f"{where} is damaged: its record is not readable")
    if RECORD not in record and record.get("format", 0) >= SEALED_FROM:
        raise Damaged(f"{where} is damaged: its record has lost its digest")
    if RECORD in record and record[RECORD] != _record_digest(record):
        raise Damaged(f"{where} is damaged: its record does not match its digest")
    return record


def check_state(state, record: dict, where: str, parts=None):
    """`state` if each of its `parts` (default: all) has the digest the record holds, else
    `Damaged`. Records without digests pass unchecked."""
    expected = record.get(DIGESTS)
    if not expected:
        return state
    have = _parts(state)
    for name in parts or have:
        if name in expected and tree_digest(have[name]) != expected[name]:
            raise Damaged(f"{where} is damaged: its {name} arrays do not match their digest")
    return state
