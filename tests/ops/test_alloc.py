"""ops.alloc: pooled buffers go back to the pool only when no tensor views them any more."""

from __future__ import annotations

import gc

import torch

from mergestore.ops import alloc


def test_a_buffer_is_reused_only_after_its_last_view_dies() -> None:
    with alloc.pooling():
        _reuse()
    assert not alloc._free  # emptied when pooling ends


def _reuse() -> None:
    a = alloc.empty((3 << 20,), torch.uint8)
    a.fill_(7)
    ptr = a.data_ptr()
    view = a[10:20]  # a view keeps the buffer out of the pool
    del a
    gc.collect()
    b = alloc.empty((3 << 20,), torch.uint8)
    assert b.data_ptr() != ptr
    assert int(view.sum()) == 70
    del view
    gc.collect()
    c = alloc.empty((1 << 20,), torch.bfloat16)  # a smaller tensor takes the idle buffer
    assert c.data_ptr() == ptr and c.shape == (1 << 20,)
    del b, c
    assert alloc._free  # both idle now


def test_no_pool_outside_pooling() -> None:
    a = alloc.empty((3 << 20,), torch.uint8)
    del a
    gc.collect()
    assert not alloc._free


def test_small_and_empty_tensors() -> None:
    t = alloc.empty((0, 4), torch.float32)
    assert t.shape == (0, 4)
    s = alloc.empty((3, 5), torch.float16)
    assert s.shape == (3, 5) and s.dtype == torch.float16


def test_a_much_larger_idle_buffer_waits_for_a_request_its_size() -> None:
    with alloc.pooling():
        big = alloc.empty_bytes(9 << 20)
        ptr = big.ctypes.data
        del big
        gc.collect()
        small = alloc.empty_bytes(4 << 20)  # 9 MiB is more than twice 4: a new buffer
        assert small.ctypes.data != ptr
        again = alloc.empty_bytes(8 << 20)  # the idle 9 MiB one
        assert again.ctypes.data == ptr
        del small, again
