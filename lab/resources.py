"""Where halab's bundled files live, both in a source checkout and in an installed wheel."""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """Return the bundled folder `name` (templates, scripts, scenarios).

    A wheel carries them inside the package as `lab/_data/NAME`; an editable
    install or a checkout finds them at the project root.
    """
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"halab's bundled folder {name!r} is missing; reinstall halab")
