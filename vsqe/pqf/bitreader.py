"""MSB-first bit reader over an RBSP (emulation prevention already removed).

Implements the descriptors of H.264/H.265/H.266 clause 7.2: u(n), f(n), ue(v), se(v) and the
helpers byte_aligned() and more_rbsp_data(). Reading past the end raises ParseError, which the
parsers turn into a per-picture "QP unknown" record (a truncated NAL never crashes the caller).
"""
from __future__ import annotations


class ParseError(Exception):
    """The syntax could not be read: truncated data, an out-of-range value or a missing set."""


class BitReader:
    __slots__ = ("_data", "_value", "_nbits", "pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        # One big integer holds all bits: slicing bits out of it is the fastest pure-Python way.
        self._value = int.from_bytes(data, "big")
        self._nbits = len(data) * 8
        self.pos = 0

    @property
    def bits_left(self) -> int:
        return self._nbits - self.pos

    def u(self, n: int) -> int:
        """u(n): n-bit unsigned integer, MSB first (7.2)."""
        if n == 0:
            return 0
        end = self.pos + n
        if end > self._nbits:
            raise ParseError(f"read of {n} bits past the end of a {self._nbits}-bit payload")
        self.pos = end
        return (self._value >> (self._nbits - end)) & ((1 << n) - 1)

    def flag(self) -> bool:
        return bool(self.u(1))

    def skip(self, n: int) -> None:
        if self.pos + n > self._nbits:
            raise ParseError(f"skip of {n} bits past the end of a {self._nbits}-bit payload")
        self.pos += n

    def ue(self, max_value: int = (1 << 32) - 2) -> int:
        """ue(v): unsigned Exp-Golomb (9.2 in all three specs); values above max_value are errors."""
        rest = self._nbits - self.pos
        if rest <= 0:
            raise ParseError("Exp-Golomb code past the end of the payload")
        window = self._value & ((1 << rest) - 1)  # the unread bits
        if window == 0:
            raise ParseError("Exp-Golomb code without a terminating 1 bit")
        leading_zeros = rest - window.bit_length()
        if leading_zeros > 32:
            raise ParseError(f"Exp-Golomb code with {leading_zeros} leading zeros")
        self.pos += leading_zeros + 1
        value = (1 << leading_zeros) - 1 + self.u(leading_zeros)
        if value > max_value:
            raise ParseError(f"Exp-Golomb value {value} exceeds {max_value}")
        return value

    def se(self, limit: int = 1 << 31) -> int:
        """se(v): signed Exp-Golomb, k -> (-1)^(k+1) * ceil(k / 2) (9.2.2); |value| <= limit."""
        k = self.ue()
        value = (k + 1) >> 1 if k & 1 else -(k >> 1)
        if abs(value) > limit:
            raise ParseError(f"signed Exp-Golomb value {value} out of range")
        return value

    def byte_aligned(self) -> bool:
        return self.pos % 8 == 0

    def align_zero(self) -> None:
        """Skip alignment bits up to the next byte boundary."""
        self.skip((-self.pos) % 8)

    def more_rbsp_data(self) -> bool:
        """True when data other than rbsp_trailing_bits() remains (7.2)."""
        rest = self._nbits - self.pos
        if rest <= 0:
            return False
        window = self._value & ((1 << rest) - 1)
        if window == 0:
            return False
        # The last 1 bit in the payload is the rbsp_stop_one_bit.
        trailing_zeros = (window & -window).bit_length() - 1
        return rest - trailing_zeros > 1
