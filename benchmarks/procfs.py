"""Process memory read from /proc (Linux): one reader for the benchmarks. A module of its own, with no imports from
the service, so a load client can use it without loading onnxruntime and the tokenizer into itself."""

from __future__ import annotations

from pathlib import Path


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    """A /proc/PID/status memory field in KiB (VmRSS: resident now; VmHWM: the peak since start or clear_refs)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for pid {pid}")
