"""One-line messages for what a user got wrong on the command line or in a config.

:func:`describe` turns the errors of config composition (Hydra, OmegaConf) and the app's own
:class:`ConfigError` into one line naming the setting, what was given and what is allowed; anything else
(a bug, a failure during training) is left to propagate with its traceback.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["ConfigError", "describe", "is_input_error", "mark_input_error", "one_line", "show"]

_INPUT_ERROR = "_lightning_lottery_input_error"


class ConfigError(ValueError):
    """A setting that cannot be used, with the reason, raised before any training starts."""


def mark_input_error(err: BaseException, setting: str | None = None) -> BaseException:
    """Mark an error (of any type) as caused by the input, found before any training step, and the setting it is
    about when known (its one line then starts with it); returns it."""
    setattr(err, _INPUT_ERROR, setting or True)
    return err


def is_input_error(err: BaseException) -> bool:
    """A ConfigError, or an error marked by :func:`mark_input_error`."""
    return isinstance(err, ConfigError) or bool(getattr(err, _INPUT_ERROR, False))


def one_line(text: str) -> str:
    """``text`` with its lines joined: a terminal shows one error line, a log keeps one record."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def show(value: Any) -> str:
    """A value as it would be typed after ``key=`` (strings quoted, so ``'1'`` and ``1`` differ)."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _missing_config(err: Any) -> str:
    missing = str(getattr(err, "missing_cfg_file", "") or "")
    options = list(getattr(err, "options", None) or [])
    group, _, name = missing.rpartition("/")
    if group and options:
        return f"{group}={name}: no such option of `{group}`; allowed: {', '.join(sorted(options))}"
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return one_line(first)


def _composition(err: Exception) -> str:
    text = str(err)
    match = re.match(r"Could not override '([^']+)'", text)
    cause = err.__cause__
    if match and cause is not None and "not in struct" in str(cause):
        key = match.group(1)
        return f"{key}: no such setting (`--cfg job` lists them; `+{key}=...` adds a new key on purpose)"
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("See https://")]
    message = "; ".join(lines)
    if cause is not None and str(cause):
        message += f" ({str(cause).splitlines()[0]})"
    return message


def _raised_by_hydra(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__", "").startswith("hydra.")


def describe(err: BaseException) -> str | None:
    """One line for an error caused by the command line or the config, or None for any other error."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if is_input_error(err):
        setting = getattr(err, _INPUT_ERROR, None)
        message = one_line(str(err) or type(err).__name__)
        return f"{setting}: {message}" if isinstance(setting, str) else message
    if isinstance(err, MissingConfigException):
        return _missing_config(err)
    if isinstance(err, OverrideParseException):
        lines = [line for line in str(err).splitlines() if line.strip() and not line.startswith("See https://")]
        return "cannot parse the command line: " + "; ".join(lines) + " (overrides are key=value)"
    if isinstance(err, HydraException):
        return _composition(err)  # type: ignore[arg-type]
    if isinstance(err, ValueError) and _raised_by_hydra(err):  # e.g. two of --cfg, --multirun, ...
        return one_line(str(err))
    if isinstance(err, OmegaConfBaseException):
        key = getattr(err, "full_key", None)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"{key}: {first}" if key else one_line(first)
    return None
