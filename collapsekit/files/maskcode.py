"""Mask codes: each keep-mask as the smallest of a few lossless byte codes, decoded bit for bit.

A keep-mask of n weights with density p carries about n * H(p) bits of
information (H the binary entropy: 0.47 bit per weight at 90 % sparsity), well
under the one bit per weight of a plain bitmask. Each mask is encoded every
way below and the shortest kept, so the choice is per tensor:

- `bits`: the bitmask itself, C order, packed eight to a byte (`numpy.packbits`);
- `deflate`, `bz2`, `lzma`: the standard library's compressors on those packed
  bits (raw deflate and raw LZMA2 streams, so no container header is paid);
  they win on structured masks (whole filters kept or pruned);
- `rice`, `rice~`: a Golomb-Rice code (Golomb 1966; Rice 1979) of the gaps
  between kept (`rice`) or pruned (`rice~`) positions. Magnitude pruning of
  unstructured weights leaves nearly independent positions, whose gaps are
  geometric, and for geometric gaps the Rice code with the best parameter k is
  within a few percent of the entropy.

The Rice code is stored in two sections, the unary quotients (gap >> k as that
many 1-bits and a 0) followed by the k-bit remainders: the same bits as the
interleaved code, but both sections decode with array operations.
"""
from __future__ import annotations

import bz2
import lzma
import zlib

import numpy as np
import torch

from collapsekit.errors import CollapsekitError

def _lzma_filters(size: int) -> list[dict]:
    # Preset 9's 64 MiB dictionary would cost ~700 MiB to compress a few KiB; one as long as the
    # packed mask (which the decoder knows from the shape) compresses the same.
    return [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": max(4096, size)}]


def _deflate(data: bytes) -> bytes:
    # raw deflate (no zlib header or checksum) at zlib's default level: level 9 takes 5x longer on
    # near-random masks to save 2 %, and on those the Rice code wins anyway
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


# name -> (compress(packed), decompress(code, len(packed))) on the packed bitmask
_COMPRESSORS = {
    "deflate": (_deflate, lambda data, size: zlib.decompress(data, -15)),
    "bz2": (lambda packed: bz2.compress(packed, 9), lambda data, size: bz2.decompress(data)),
    "lzma": (lambda packed: lzma.compress(packed, format=lzma.FORMAT_RAW, filters=_lzma_filters(len(packed))),
             lambda data, size: lzma.decompress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(size))),
}
FORMS = ("bits", *_COMPRESSORS, "rice", "rice~")


def rice_size(gaps: np.ndarray, k: int) -> int:
    """Bytes of the Rice code of `gaps` with parameter k: sum(gap >> k) + len * (k + 1) bits, two sections."""
    n = len(gaps)
    return (int((gaps >> k).sum()) + n + 7) // 8 + (n * k + 7) // 8


def best_rice_parameter(gaps: np.ndarray) -> int:
    """The k >= 0 whose Rice code of `gaps` is shortest.

    The size sum(gap >> k) + n * k is convex in k (each step up saves about half
    of the quotients and costs n bits), so a descent from log2(ln 2 * mean gap),
    the optimum for geometric gaps (Gallager & van Voorhis 1975), finds the exact
    minimum in a step or two.
    """
    if len(gaps) == 0:
        return 0
    k = max(0, int(np.log2(max(float(gaps.mean()), 1.0) * np.log(2))))
    while k > 0 and rice_size(gaps, k - 1) <= rice_size(gaps, k):
        k -= 1
    while rice_size(gaps, k + 1) < rice_size(gaps, k):
        k += 1
    return k


def rice_encode(gaps: np.ndarray, k: int) -> bytes:
    """Rice code of the non-negative `gaps`: unary quotients (q ones, one zero each), then k-bit remainders."""
    gaps = gaps.astype(np.int64, copy=False)
    q = gaps >> k
    ends = np.cumsum(q + 1) - 1  # the terminating 0 of each quotient
    unary = np.ones(int(ends[-1]) + 1 if len(gaps) else 0, dtype=bool)
    unary[ends] = False
    remainders = np.empty((len(gaps), k), dtype=bool)  # bit by bit: n x k bools, not n x k int64
    for j in range(k):
        remainders[:, j] = (gaps >> (k - 1 - j)) & 1
    return np.packbits(unary).tobytes() + np.packbits(remainders.reshape(-1)).tobytes()


def rice_decode(data: bytes, n: int, k: int) -> np.ndarray:
    """The n gaps `rice_encode` turned into `data` (int64)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    tail = (n * k + 7) // 8
    if tail > len(data):
        raise CollapsekitError(f"Rice code of {n} gaps needs over {tail} bytes, has {len(data)}")
    unary = np.unpackbits(np.frombuffer(data, dtype=np.uint8, count=len(data) - tail))
    ends = np.flatnonzero(unary == 0)[:n]
    if len(ends) < n:
        raise CollapsekitError(f"Rice code holds {len(ends)} of its {n} gaps")
    q = np.diff(ends, prepend=-1) - 1
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8, offset=len(data) - tail), count=n * k).reshape(n, k)
    gaps = q << k
    for j in range(k):
        gaps |= bits[:, j].astype(np.int64) << (k - 1 - j)
    return gaps


def _gaps(positions: np.ndarray) -> np.ndarray:
    return np.diff(positions, prepend=-1) - 1


def encode(mask: torch.Tensor) -> tuple[str, int, bytes]:
    """(form, parameter, bytes): the shortest code of the flattened bool `mask` among FORMS (ties: first listed)."""
    flat = mask.detach().to("cpu", torch.bool).contiguous().view(-1).numpy()
    packed = np.packbits(flat).tobytes()
    codes: list[tuple[str, int, bytes]] = [("bits", 0, packed)]
    codes += [(name, 0, compress(packed)) for name, (compress, _) in _COMPRESSORS.items()]
    for form, positions in (("rice", np.flatnonzero(flat)), ("rice~", np.flatnonzero(~flat))):
        gaps = _gaps(positions)
        k = best_rice_parameter(gaps)
        # the count of coded positions is the caller's (values stored); rice~ stores their complement
        codes.append((form, k, rice_encode(gaps, k)))
    return min(codes, key=lambda code: len(code[2]))


def decode(form: str, parameter: int, data: bytes, numel: int, kept: int) -> torch.Tensor:
    """The flat bool mask of `numel` entries, `kept` of them True, that `encode` gave as (form, parameter, data).

    CollapsekitError when the code is unknown or does not decode to such a mask.
    """
    if form == "bits" or form in _COMPRESSORS:
        packed = data if form == "bits" else _COMPRESSORS[form][1](data, (numel + 7) // 8)
        if len(packed) != (numel + 7) // 8:
            raise CollapsekitError(f"{form} mask decodes to {len(packed)} bytes, {numel} entries need "
                                   f"{(numel + 7) // 8}")
        flat = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=numel).astype(bool)
    elif form in ("rice", "rice~"):
        coded = kept if form == "rice" else numel - kept
        positions = np.cumsum(rice_decode(data, coded, parameter) + 1) - 1
        if coded and (positions[-1] >= numel):
            raise CollapsekitError(f"{form} mask names position {int(positions[-1])} of {numel}")
        flat = np.zeros(numel, dtype=bool)
        flat[positions] = True
        if form == "rice~":
            flat = ~flat
    else:
        raise CollapsekitError(f"unknown mask code {form!r} (known: {', '.join(FORMS)})")
    if int(flat.sum()) != kept:
        raise CollapsekitError(f"{form} mask keeps {int(flat.sum())} entries, expected {kept}")
    return torch.from_numpy(flat)


__all__ = ["FORMS", "encode", "decode", "rice_encode", "rice_decode", "rice_size", "best_rice_parameter"]
