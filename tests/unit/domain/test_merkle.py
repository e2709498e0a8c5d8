"""Merkle tree hashes agree with Certificate Transparency's published test vectors (RFC 6962)."""

import pytest

from gateway.domain import merkle

# The reference leaves and the roots of the trees of their first 1..8 leaves, as every RFC 6962
# implementation's tests publish them.
LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
HASHES = [merkle.leaf_hash(leaf) for leaf in LEAVES]


def test_roots_match_the_reference():
    assert merkle.root([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    for size in range(1, 9):
        assert merkle.root(HASHES[:size]).hex() == ROOTS[size - 1], size


@pytest.mark.parametrize(("index", "path"), [
    (0, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
         "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
         "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
         "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
         "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
])
def test_inclusion_proofs_match_the_reference(index, path):
    proof = merkle.inclusion_proof(HASHES, index)
    assert [p.hex() for p in proof] == path
    assert merkle.verify_inclusion(HASHES[index], index, 8, proof, bytes.fromhex(ROOTS[7]))


def test_every_leaf_of_every_shape_proves_and_nothing_else_does():
    leaves = [merkle.leaf_hash(bytes([i, i * 7 % 256])) for i in range(37)]
    for size in range(1, len(leaves) + 1):
        tree = leaves[:size]
        top = merkle.root(tree)
        for index in range(size):
            proof = merkle.inclusion_proof(tree, index)
            assert merkle.verify_inclusion(tree[index], index, size, proof, top)
            # Another leaf, another place or a shortened path: refused.
            assert not merkle.verify_inclusion(merkle.leaf_hash(b"forged"), index, size, proof, top)
            assert not merkle.verify_inclusion(tree[index], index + 1, size, proof, top)
            if proof:
                assert not merkle.verify_inclusion(tree[index], index, size, proof[:-1], top)
