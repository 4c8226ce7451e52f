"""The staged reader (pinned buffers, parallel reads) gives exactly the memory-mapped read's tensors."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from sana.loading import staged_read
from sana.loading.staged_read import TensorEntry, plan_reads, read_header, read_staged

CUDA = torch.cuda.is_available()


def mixed_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(300, 70, generator=g),
        "a.bias": torch.randn(7, generator=g).half(),
        "b.big": torch.randn(5000, generator=g).to(torch.bfloat16),  # several chunks at the tests' chunk size
        "b.flags": torch.rand(13, generator=g) > 0.5,  # an odd byte count before the next tensor
        "b.index": torch.randint(-5, 5, (3, 3), generator=g),
        "c.scalar": torch.tensor(2.5),
        "c.empty": torch.zeros(0, 4),
        "c.bytes": torch.randint(0, 255, (33,), generator=g, dtype=torch.uint8),
    }


def covered(reads) -> dict[str, list[tuple[int, int]]]:
    spans: dict[str, list[tuple[int, int]]] = {}
    for r in reads:
        for p in r.pieces:
            assert 0 <= p.read_offset and p.read_offset + p.length <= r.length
            spans.setdefault(p.name, []).append((p.tensor_offset, p.tensor_offset + p.length))
    return spans


@pytest.mark.parametrize("chunk", [64, 1000, 1 << 20])
def test_the_plan_reads_every_byte_once_in_reads_no_larger_than_a_chunk(chunk):
    entries = [TensorEntry("x", torch.float32, (500,), 100, 2100), TensorEntry("y", torch.uint8, (3,), 2100, 2103),
               TensorEntry("z", torch.float16, (10,), 2200, 2220)]
    reads = plan_reads(entries, chunk=chunk, max_gap=50)
    assert all(0 < r.length <= chunk for r in reads)
    for e, spans in zip(entries, (covered(reads)[e.name] for e in entries)):
        spans.sort()
        assert spans[0][0] == 0 and spans[-1][1] == e.end - e.begin
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no byte twice
    for r in reads:  # each piece's bytes are where the file has them
        for p in r.pieces:
            e = next(e for e in entries if e.name == p.name)
            assert r.start + p.read_offset == e.begin + p.tensor_offset


def test_neighbours_share_a_read_and_a_wide_gap_splits_them():
    near = [TensorEntry("a", torch.uint8, (10,), 0, 10), TensorEntry("b", torch.uint8, (10,), 15, 25)]
    assert len(plan_reads(near, chunk=100, max_gap=8)) == 1
    assert len(plan_reads(near, chunk=100, max_gap=4)) == 2


@pytest.mark.parametrize("chunk,readers", [(256, 3), (1 << 20, 4), (97, 1)])
def test_staged_read_gives_the_files_tensors_bit_for_bit(tmp_path, chunk, readers):
    tensors = mixed_tensors()
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    expected = load_file(str(path))
    entries = read_header(path)
    assert sorted(e.name for e in entries) == sorted(tensors)
    read = read_staged(path, entries, torch.device("cpu"), chunk=chunk, readers=readers)
    assert sorted(read) == sorted(expected)
    for name, tensor in expected.items():
        assert read[name].dtype == tensor.dtype and read[name].shape == tensor.shape
        assert torch.equal(read[name], tensor), name


def test_a_subset_of_the_tensors_is_read_alone(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(mixed_tensors(), str(path))
    chosen = [e for e in read_header(path) if e.name.startswith("b.")]
    read = read_staged(path, chosen, torch.device("cpu"), chunk=512)
    assert sorted(read) == ["b.big", "b.flags", "b.index"]
    assert torch.equal(read["b.big"], load_file(str(path))["b.big"])


def write_raw(path, header: dict, data: bytes) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


@pytest.mark.parametrize("header,data", [
    ({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),  # past the end
    ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16),  # size not the shape's
    ({"x": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16),  # a dtype it does not know
    ({"x": {"shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16),
    (["not", "an", "object"], b""),
])
def test_a_header_it_cannot_take_is_refused_for_the_memory_mapped_path(tmp_path, header, data):
    path = tmp_path / "w.safetensors"
    write_raw(path, header, data)
    with pytest.raises(staged_read.HeaderError):
        read_header(path)


def test_a_header_longer_than_the_file_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(staged_read.HeaderError):
        read_header(path)


def test_a_file_cut_short_after_its_header_was_read_is_an_os_error(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"x": torch.randn(1000)}, str(path))
    entries = read_header(path)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(OSError, match="ended"):
        read_staged(path, entries, torch.device("cpu"), chunk=256)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_reading_to_a_gpu_staged_equals_the_memory_mapped_read(tmp_path, monkeypatch, dtype):
    from sana.loading.files import read_safetensors

    path = tmp_path / "w.safetensors"
    tensors = {**mixed_tensors(), "d.large": torch.randn(9_000_000).to(torch.bfloat16)}  # larger than a chunk
    save_file(tensors, str(path))
    staged = read_safetensors(path, device="cuda", dtype=dtype)
    monkeypatch.setenv("SANA_STAGED_READ", "0")
    mapped = read_safetensors(path, device="cuda", dtype=dtype)
    assert sorted(staged) == sorted(mapped)
    for name in mapped:
        assert staged[name].device.type == "cuda" and staged[name].dtype == mapped[name].dtype
        assert torch.equal(staged[name].cpu(), mapped[name].cpu()), name
