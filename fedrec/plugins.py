"""Strategy plugin registry: Python entry points or dotted paths.

A strategy is selected by one name. fedrec looks the name up in the entry-point
group ``fedrec.strategies`` (built-ins register there too, so there is one code
path), or imports it from a dotted path ``package.module:Class`` for unpublished
code. The class carries its client half (``client_half``: a dotted path), so one
name selects both sides. Duplicate names across distributions are an error rather
than a silent override.

Third-party registration (in the plugin's ``pyproject.toml``)::

    [project.entry-points."fedrec.strategies"]
    myfair = "myfair.strategy:MyFairStrategy"
"""

from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, cast

from fedrec.errors import PluginError

if TYPE_CHECKING:
    from fedrec.strategies.base import FedrecStrategy

GROUP = "fedrec.strategies"
_DOTTED = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def registered(group: str, what: str, error: type[Exception] = PluginError) -> dict[str, Any]:
    """The entry points of ``group`` by name; a name registered twice with different
    targets raises ``error`` (``what`` names the kind of plugin in the message)."""
    found: dict[str, Any] = {}
    for ep in entry_points(group=group):
        other = found.get(ep.name)
        if other is not None and other.value != ep.value:
            raise error(f"{what} '{ep.name}' is registered twice: {other.value} and {ep.value}")
        found[ep.name] = ep
    return found


def _entry_points() -> dict[str, Any]:
    return registered(GROUP, "strategy name")


def strategy_names() -> list[str]:
    """Names registered in the ``fedrec.strategies`` entry-point group."""
    return sorted(_entry_points())


def import_object(path: str) -> Any:
    """Import ``package.module:Attr`` (dotted attribute allowed after the colon)."""
    if not _DOTTED.match(path):
        raise PluginError(f"'{path}' is not a dotted path of the form package.module:Class")
    module_name, attr = path.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import module '{module_name}' for '{path}': {exc}") from None
    except Exception as exc:  # a broken module (SyntaxError, an error at import time)
        raise PluginError(
            f"module '{module_name}' for '{path}' failed to import: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(
                f"module '{module_name}' has no attribute '{attr}' (from '{path}')"
            ) from None
    return obj


def load_strategy(name: str) -> type[FedrecStrategy]:
    """Resolve a strategy name or dotted path to its class."""
    if ":" in name:
        cls = import_object(name)
    else:
        eps = _entry_points()
        if name not in eps:
            allowed = ", ".join(sorted(eps)) or "(none installed)"
            raise PluginError(
                f"unknown strategy '{name}'; registered strategies: {allowed}; "
                "or give a dotted path package.module:Class"
            )
        try:
            cls = eps[name].load()
        except Exception as exc:  # a broken plugin must not look like a missing one
            raise PluginError(
                f"strategy '{name}' ({eps[name].value}) failed to load: {exc}"
            ) from None
    if not isinstance(cls, type):
        raise PluginError(f"strategy '{name}' does not name a class")
    for attr in ("client_half", "Params"):
        if not hasattr(cls, attr):
            raise PluginError(
                f"strategy '{name}' ({cls.__module__}.{cls.__qualname__}) "
                f"lacks '{attr}'; subclass fedrec.strategies.FedrecStrategy"
            )
    # A class with the FedrecStrategy plugin interface (checked above by its attributes).
    return cast("type[FedrecStrategy]", cls)
