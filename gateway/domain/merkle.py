"""Merkle tree hashes as Certificate Transparency defines them (RFC 6962 §2.1, RFC 9162 §2.1).

A ledger checkpoint signs the root over every chain's head (docs/ledger.md). With a root, one
number's head can later be proven against a checkpoint with a handful of hashes (an inclusion
proof) instead of the whole list of heads; taking CT's definition rather than our own means any
RFC 9162 library can check such a proof.

Pure: hashlib only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class RootBuilder:
    """The root of a tree fed one leaf hash at a time, in memory that grows with log2 of its size.

    Keeps the roots of the complete subtrees seen so far (sizes are decreasing powers of two);
    folding them from the right gives the root RFC 6962 defines for any size.
    """

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []  # (subtree size, subtree root)

    def add(self, leaf: bytes) -> None:
        stack = self._stack
        size, node = 1, leaf
        while stack and stack[-1][0] == size:
            node = node_hash(stack.pop()[1], node)
            size *= 2
        stack.append((size, node))
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        node = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            node = node_hash(left, node)
        return node


def root(leaves: Iterable[bytes]) -> bytes:
    """The Merkle tree hash of `leaves` (leaf hashes, in order)."""
    builder = RootBuilder()
    for leaf in leaves:
        builder.add(leaf)
    return builder.root()


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf `index` (RFC 6962 §2.1.1): one sibling subtree root per level."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} is not in a tree of {len(leaves)}")
    path: list[bytes] = []
    low, high = 0, len(leaves)
    while high - low > 1:
        split = low + _largest_power_of_two_below(high - low)
        if index < split:
            path.append(root(leaves[split:high]))
            high = split
        else:
            path.append(root(leaves[low:split]))
            low = split
    return path[::-1]  # from the leaf up


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes) -> bool:
    """Whether `proof` places `leaf` at `index` of a tree of `size` leaves with `expected_root` (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size:
        return False
    fn, sn, node = index, size - 1, leaf
    for sibling in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            node = node_hash(node, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and node == expected_root


def _largest_power_of_two_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)
