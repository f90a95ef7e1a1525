"""Files `init` lays into a new workspace, shipped as package data beside this module.

    from mlx_partner.templates import PROFILE_TEMPLATE   # templates/profile.md

`init` writes the profile template; `sources.profile` refuses a profile.md that is still it.
Both read it from here, the bottom of the import layers, so neither depends on the other.
"""

from __future__ import annotations

from importlib.resources import files

__all__ = ["PROFILE_TEMPLATE"]

PROFILE_TEMPLATE: str = files(__name__).joinpath("profile.md").read_text(encoding="utf-8")
