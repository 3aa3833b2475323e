import itertools

import pytest
import torch
from cryptography.exceptions import InvalidTag

from fedmtl.privacy.secagg import keys, prg, shamir


def test_any_t_of_n_shares_reconstruct_and_t_minus_1_do_not():
    g = torch.Generator().manual_seed(1)
    secret = keys.random_bytes(32, g)
    n, t = 6, 4
    shares = shamir.split(secret, [x + 1 for x in range(n)], t, g)
    for subset in itertools.combinations(shares, t):
        assert shamir.reconstruct(list(subset), t, 32) == secret
    for subset in itertools.combinations(shares, t - 1):
        with pytest.raises(ValueError, match="need 4 shares"):
            shamir.reconstruct(list(subset), t, 32)
        # interpolating t-1 points yields an unrelated value, not the secret
        assert shamir.interpolate_at_zero(list(subset)) != int.from_bytes(secret, "big")


def test_split_validates_threshold_and_points():
    with pytest.raises(ValueError, match="threshold=5"):
        shamir.split(b"x", [1, 2, 3], 5)
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(b"x", [1, 1, 2], 2)


def test_key_agreement_symmetric_and_bound_to_info():
    g = torch.Generator().manual_seed(0)
    a, b = keys.generate_keypair(g), keys.generate_keypair(g)
    assert keys.agree(a, b.public, b"x") == keys.agree(b, a.public, b"x")
    assert keys.agree(a, b.public, b"x") != keys.agree(a, b.public, b"y")
    assert keys.KeyPair.from_private_bytes(a.private_bytes()).public == a.public


def test_aead_detects_tampering():
    key = bytes(32)
    blob = keys.encrypt(key, b"share", b"hdr", None)
    assert keys.decrypt(key, blob, b"hdr") == b"share"
    bad = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(InvalidTag):
        keys.decrypt(key, bad, b"hdr")
    with pytest.raises(InvalidTag):
        keys.decrypt(key, blob, b"other")


def test_prg_deterministic_in_range():
    a = prg.expand(bytes(range(32)), 1000, 20)
    assert (a == prg.expand(bytes(range(32)), 1000, 20)).all()
    assert int(a.max()) < 2**20 and len(set(a.tolist())) > 900
    assert prg.expand(bytes(range(32)), 10, 64).dtype.name == "uint64"
