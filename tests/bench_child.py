"""A job for the benchmark harness's own test: a child that holds a known amount of memory (no torch)."""


def hold(mib: int) -> dict:
    """Allocate and touch ``mib`` MiB, then return its size."""
    block = bytearray(mib * 2**20)
    block[::4096] = b"\x01" * len(block[::4096])
    return {"held": len(block) // 2**20}
