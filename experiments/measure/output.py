"""The --output file of the measuring tools."""

from __future__ import annotations

import json

from ladder_jax import files


def write_json_output(path: str | None, figures: dict) -> None:
    """Writes a measuring tool's figures as JSON (indented by 2, in their order), atomically.

    Args:
      path: the file (--output); None or empty: nothing is written.
      figures: the figures by name.
    """
    if path:
        files.write_text_atomic(path, json.dumps(figures, indent=2))
