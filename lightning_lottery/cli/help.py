"""``lightning-lottery --help``: the recipes (one line each, from their headers) and the config groups users pick.

The help text is Hydra's ``hydra/help`` config (``conf/hydra/help/lottery.yaml``); its lists come from the
``lottery_help`` resolver registered here, which reads the config folder, so a new recipe or option shows up
without editing the help. Internal groups (``recipe_preset``: what ``preset=fast`` adds per recipe) stay hidden.
"""

from __future__ import annotations

import string
from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["CONF", "HIDDEN_GROUPS", "help_section", "recipe_summaries", "register_help_resolver", "render_help"]

CONF = Path(__file__).resolve().parents[1] / "conf"
HIDDEN_GROUPS = ("hydra", "recipe", "recipe_preset")  # recipes get their own section; hydra/ is --hydra-help's


def recipe_summaries(conf: Path = CONF) -> dict[str, str]:
    """``{recipe: its header's first line}``, e.g. ``{"cifar10_conv2": "Conv-2 on CIFAR-10."}``."""
    summaries = {}
    for path in sorted((conf / "recipe").glob("*.yaml")):
        comments = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
        summaries[path.stem] = next((c for c in comments if c and not c.startswith("@package")), "")
    return summaries


def _groups(conf: Path) -> dict[str, list[str]]:
    return {
        folder.name: sorted(p.stem for p in folder.glob("*.yaml"))
        for folder in sorted(p for p in conf.iterdir() if p.is_dir())
        if folder.name not in HIDDEN_GROUPS and not folder.name.startswith("_")
    }


def help_section(name: str) -> str:
    """The ``recipes`` or ``groups`` section of the help text (``$`` escaped for Hydra's string.Template)."""
    if name == "recipes":
        summaries = recipe_summaries()
        width = max(map(len, summaries), default=0)
        lines = [f"  {recipe.ljust(width)}  {summary}" for recipe, summary in summaries.items()]
    elif name == "groups":
        lines = [f"  {group}: {', '.join(options)}" for group, options in _groups(CONF).items()]
    else:
        raise ValueError(f"unknown help section {name!r}; allowed: recipes, groups")
    return "\n".join(lines).replace("$", "$$")


def render_help() -> str:
    """The text of ``--help``: the ``hydra/help/lottery.yaml`` template, resolved and filled.

    The app prints it without Hydra's help path, which lists every option of every config group (Hydra's own
    included) before it looks at the template, taking seconds, although this template uses none of those lists.
    """
    register_help_resolver()
    template = OmegaConf.load(CONF / "hydra" / "help" / "lottery.yaml").template
    return string.Template(template).safe_substitute()


def register_help_resolver() -> None:
    """Make ``${lottery_help:recipes}`` and ``${lottery_help:groups}`` available to the help config."""
    if not OmegaConf.has_resolver("lottery_help"):
        OmegaConf.register_new_resolver("lottery_help", help_section)
