"""OUTPUT.checkpoint.json: what `--resume` continues from.

It holds the job's identity (options, input, model), the rows done, the writer's state, the running tally and the
fingerprint of the input read so far. It is replaced atomically after every durable chunk, so it never runs ahead
of the output.
"""

from __future__ import annotations

import json
from pathlib import Path

from service.batch.errors import InputError
from service.batch.writers import atomic_write_text


class Checkpoint:
    def __init__(self, output: str):
        self.path = Path(output + ".checkpoint.json")

    def load(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{self.path} is not a readable checkpoint ({exc}); rerun with --restart") from exc

    def save(self, state: dict) -> None:
        atomic_write_text(self.path, json.dumps(state, indent=1))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
