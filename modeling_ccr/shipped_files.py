"""Where the files the package ships beside its code are: ``MODEL_CARD.md`` (the model card template) and
``data/`` (the embedded EmojiCCR dataset).

They live at the top of the source tree. A wheel carries them inside the package, as
``modeling_ccr/shipped/`` (pyproject.toml maps that package to the repository root), so an installed
package finds them through ``importlib.resources`` whatever the working directory; a source checkout
finds them at its root. Every caller also takes an explicit path.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

_CHECKOUT_ROOT = Path(__file__).resolve().parents[1]


def shipped_path(relative: str) -> Path:
    """The path of ``relative`` (e.g. ``"MODEL_CARD.md"``, ``"data/emoji_ccr"``): in the installed package
    when it is there, else in the source checkout (which need not exist: callers report a missing file)."""
    installed = files(__package__).joinpath("shipped", *relative.split("/"))
    if installed.is_file() or installed.is_dir():
        return Path(str(installed))
    return _CHECKOUT_ROOT / relative
