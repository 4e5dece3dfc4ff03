"""`kineto_read.gunzip`: every member of a gzip file, padding skipped, a cut stream's
contents, corrupt data refused; held to the gzip module on whole files."""
import gzip
import io
import random
import zlib

import pytest

from profkit.parsers import kineto_read
from profkit.parsers.kineto_read import gunzip


def _text(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    return b"".join(b'{"ph":"X","name":"k%d","ts":%d},' % (rng.randrange(50), i) for i in range(n))


def _gunzipped(tmp_path, packed: bytes) -> tuple[bytes, bool]:
    path = tmp_path / "t.json.gz"
    path.write_bytes(packed)
    out = io.BytesIO()
    cut = gunzip(path, out)
    return out.getvalue(), cut


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few KB, so that members, padding and output limits straddle them."""
    monkeypatch.setattr(kineto_read, "_GUNZIP_BLOCK", 4096)
    monkeypatch.setattr(kineto_read, "_GUNZIP_OUT", 10_000)


@pytest.mark.parametrize("blocks", ["default", "small"])
def test_members_and_padding_as_the_gzip_module_reads_them(tmp_path, request, blocks):
    if blocks == "small":
        request.getfixturevalue("small_blocks")
    first, second = gzip.compress(_text(20_000, 1)), gzip.compress(_text(3_000, 2))
    for packed in (first, first + second, first + b"\0" * 10_000, first + b"\0" * 5000 + second + b"\0" * 3):
        held, cut = _gunzipped(tmp_path, packed)
        assert held == gzip.decompress(packed)
        assert not cut


def test_a_cut_stream_gives_what_it_holds(tmp_path, small_blocks):
    packed = gzip.compress(_text(20_000, 3))
    for end in (len(packed) // 3, len(packed) - 4):
        held, cut = _gunzipped(tmp_path, packed[:end])
        assert cut
        assert held == zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(packed[:end])
        assert len(held) > 0
    # A second member cut short: the first whole, then what the second holds.
    first, second = gzip.compress(_text(2_000, 4)), gzip.compress(_text(2_000, 5))
    held, cut = _gunzipped(tmp_path, first + second[:len(second) // 2])
    assert cut
    assert held.startswith(gzip.decompress(first)) and len(held) > len(gzip.decompress(first))


@pytest.mark.parametrize("damage", ["crc", "deflate", "trailing"])
def test_corrupt_data_is_refused(tmp_path, damage):
    packed = bytearray(gzip.compress(_text(5_000, 6)))
    if damage == "crc":
        packed[-8] ^= 0xFF
    elif damage == "deflate":
        packed[len(packed) // 2:len(packed) // 2 + 16] = b"\xff" * 16
    else:
        packed += b"not a gzip member"
    with pytest.raises(zlib.error):
        _gunzipped(tmp_path, bytes(packed))
