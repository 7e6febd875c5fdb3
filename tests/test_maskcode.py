"""collapsekit.files.maskcode: every mask code decodes bit for bit, the shortest wins, and it is near the entropy."""
import math

import numpy as np
import pytest
import torch

from collapsekit.errors import CollapsekitError
from collapsekit.files import maskcode


def entropy_bytes(mask: torch.Tensor) -> float:
    p = float(mask.float().mean())
    if p in (0.0, 1.0):
        return 0.0
    return mask.numel() * -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / 8


def all_codes(mask: torch.Tensor) -> dict[str, tuple[int, bytes]]:
    """Every form's (parameter, bytes) for `mask`, built the way `encode` builds them."""
    flat = mask.reshape(-1).numpy()
    packed = np.packbits(flat).tobytes()
    codes = {"bits": (0, packed)}
    codes.update({name: (0, compress(packed)) for name, (compress, _) in maskcode._COMPRESSORS.items()})
    for form, positions in (("rice", np.flatnonzero(flat)), ("rice~", np.flatnonzero(~flat))):
        gaps = np.diff(positions, prepend=-1) - 1
        k = maskcode.best_rice_parameter(gaps)
        codes[form] = (k, maskcode.rice_encode(gaps, k))
    return codes


def test_rice_code_by_hand_and_round_trip():
    # gaps 0, 5, 9 with k = 2: quotients 0, 1, 2 -> unary 0 | 10 | 110; remainders 00 01 01
    data = maskcode.rice_encode(np.array([0, 5, 9]), 2)
    assert data == bytes([0b01011000, 0b00010100])
    assert maskcode.rice_size(np.array([0, 5, 9]), 2) == len(data)
    assert maskcode.rice_decode(data, 3, 2).tolist() == [0, 5, 9]
    rng = np.random.default_rng(0)
    for k in (0, 1, 3, 7):
        gaps = np.concatenate([rng.geometric(0.1, 500) - 1, [0, 0, 1 << 12]])
        data = maskcode.rice_encode(gaps, k)
        assert len(data) == maskcode.rice_size(gaps, k)
        assert np.array_equal(maskcode.rice_decode(data, len(gaps), k), gaps)
    assert maskcode.rice_encode(np.zeros(0, dtype=np.int64), 3) == b""


def test_best_rice_parameter_is_the_exact_minimum():
    rng = np.random.default_rng(1)
    skewed = np.concatenate([np.zeros(5000, dtype=np.int64), [1 << 20]])  # not geometric: one huge gap
    for gaps in [rng.geometric(p, 2000) - 1 for p in (0.5, 0.1, 0.01, 0.001)] + [skewed]:
        best = maskcode.best_rice_parameter(gaps)
        assert maskcode.rice_size(gaps, best) == min(maskcode.rice_size(gaps, k) for k in range(0, 20))


@pytest.mark.parametrize("density", [0.0, 0.003, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("numel", [1, 7, 135, 40_000])
def test_every_code_decodes_bit_for_bit_and_the_shortest_is_chosen(density, numel):
    g = torch.Generator().manual_seed(numel)
    mask = torch.rand(numel, generator=g) < density
    kept = int(mask.sum())
    codes = all_codes(mask)
    for form, (parameter, data) in codes.items():
        assert torch.equal(maskcode.decode(form, parameter, data, numel, kept), mask), form
    form, parameter, data = maskcode.encode(mask)
    assert len(data) == min(len(d) for _, d in codes.values())
    assert torch.equal(maskcode.decode(form, parameter, data, numel, kept), mask)


def test_random_mask_costs_close_to_its_entropy_and_structure_goes_to_a_compressor():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(256, 256, 3, 3, generator=g) < 0.1  # what magnitude pruning of random weights leaves
    form, _, data = maskcode.encode(mask)
    assert form == "rice"
    # H(0.1) = 0.469 bit per weight, a bitmask 1 bit: the Rice code is within 3 % of the entropy
    assert entropy_bytes(mask) <= len(data) <= 1.03 * entropy_bytes(mask)
    assert len(data) < 0.5 * mask.numel() / 8
    filters = torch.zeros(256, 256 * 9, dtype=torch.bool)
    filters[::7] = True  # whole filters kept: runs that a dictionary compressor folds away
    form, _, data = maskcode.encode(filters)
    assert form in ("deflate", "bz2", "lzma") and len(data) < 200
    # a dense mask (a layer MT keeps whole) or an emptied one costs nothing
    assert maskcode.encode(torch.ones(1000, dtype=torch.bool))[2] == b""
    assert maskcode.encode(torch.zeros(1000, dtype=torch.bool))[2] == b""


def test_bad_codes_raise_one_line_errors():
    mask = torch.rand(1000, generator=torch.Generator().manual_seed(0)) < 0.1
    kept = int(mask.sum())
    form, parameter, data = maskcode.encode(mask)
    assert form == "rice"
    with pytest.raises(CollapsekitError, match="gaps"):
        maskcode.decode("rice", parameter, data[:5], 1000, kept)
    with pytest.raises(CollapsekitError, match="keeps|position"):
        maskcode.decode("rice", parameter, data, 500, kept)
    with pytest.raises(CollapsekitError, match="keeps"):
        maskcode.decode("bits", 0, np.packbits(mask.numpy()).tobytes(), 1000, kept + 1)
    with pytest.raises(CollapsekitError, match="unknown mask code 'zstd'"):
        maskcode.decode("zstd", 0, data, 1000, kept)
