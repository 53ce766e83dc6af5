"""Peak memory of scoring one long text, plain and with diagnostics, in this (fresh) process; `training.evaluate`
runs it as a child so the batched scoring it measures first does not set the peak, and so torch is not loaded.

    python -m benchmarks.long_review_memory exported/imdb-lstm review.txt   # prints JSON, MB

Writing 5 to /proc/self/clear_refs resets the kernel's peak-RSS counter (VmHWM, Linux >= 4.0), so each figure is the
peak during that one call above the RSS just before it. It is the call's first run, so what the first diagnostics
request sets up (its session) is included; "kept" is what stays resident afterwards (onnxruntime and malloc keep some
for the next call).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from benchmarks.procfs import rss_kib
from service.runtime import ModelRuntime


def main(argv: list[str] | None = None) -> int:
    model_dir, text_path = argv if argv is not None else sys.argv[1:]
    rt = ModelRuntime(Path(model_dir), intra_op_threads=1)
    text = Path(text_path).read_text(encoding="utf-8")
    enc = rt.encode([text])

    def mb(key: str = "VmRSS") -> float:
        return rss_kib(os.getpid(), key) / 1024

    out = {"loaded_rss_mb": round(mb(), 1)}
    for name, call in (("plain", lambda: rt.predict(enc)), ("diagnostics", lambda: rt.diagnose(text, enc[0]))):
        before = mb()
        Path("/proc/self/clear_refs").write_text("5")
        call()
        out[f"{name}_peak_mb"] = round(mb("VmHWM") - before, 1)
        out[f"{name}_kept_mb"] = round(mb() - before, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
