"""connect fixes glibc's mmap threshold (hf_llpf.devices.allocator) when asked, and only then."""

from __future__ import annotations

import sys

import pytest

from hf_llpf.devices import allocator


class _Libc:
    def __init__(self):
        self.calls = []

        def mallopt(param, value):
            self.calls.append((param, value))
            return 1

        self.mallopt = mallopt


@pytest.fixture
def libc(monkeypatch):
    fake = _Libc()
    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: fake)
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    for name in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(allocator.ENV, "return")
    return fake


def test_the_threshold_is_set_once_to_128_kib(libc):
    assert allocator.return_freed_memory() is True
    assert allocator.return_freed_memory() is True
    assert libc.calls == [(-3, 128 * 1024)]  # M_MMAP_THRESHOLD, once


@pytest.mark.parametrize(
    "name, value",
    [("HF_LLPF_ALLOCATOR", ""), ("HF_LLPF_ALLOCATOR", "keep"), ("MALLOC_MMAP_THRESHOLD_", "65536"),
     ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")],
)  # fmt: skip
def test_not_asked_or_a_setting_of_the_users_own_is_kept(libc, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert allocator.return_freed_memory() is False
    assert libc.calls == []


def test_nothing_is_done_without_glibc(libc, monkeypatch):
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert allocator.return_freed_memory() is False
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.return_freed_memory() is False
    assert libc.calls == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_real_mallopt_accepts_it(monkeypatch):
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.setenv(allocator.ENV, "return")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert allocator.return_freed_memory() is True
