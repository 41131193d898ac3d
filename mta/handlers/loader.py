"""Registration: `handlers.registry` names -> the Python callables they point at.

A target is `package.module:function` (imported from sys.path) or a file path
(`/etc/mta/handlers/support.py`, function `email`; `support.py:other` for another
function). The callable must be `async def email(message, env, ctx)`.

Handlers are imported when the node starts (`Registry.load`, errors raise: a node does
not start with a handler it cannot import) and again on SIGHUP (`reload_handlers`: a
file edited in place is re-read; when any target fails, the running handlers stay and
the error is logged). The runner notices a new `settings.handlers` object and picks up
the registry loaded for it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mta.config import HandlerEntry, HandlersSettings, Settings

__all__ = ["HandlerLoadError", "LoadedHandler", "Registry", "registry_for",
           "reload_handlers"]

log = logging.getLogger("mta.handlers")


class HandlerLoadError(Exception):
    pass


@dataclass(frozen=True)
class LoadedHandler:
    name: str
    target: str
    function: Callable[..., Any]
    time_limit: float
    fallback: str  # reject_4xx | forward
    forward_to: str | None
    vars: dict[str, str]
    kv_namespaces: tuple[str, ...]


def _vars(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, _, value = item.partition("=")
        out[name.strip()] = value
    return out


def _import_target(target: str, fresh: bool) -> Callable[..., Any]:
    path_part, _, func_name = target.partition(":")
    looks_like_file = path_part.endswith(".py") or "/" in path_part
    try:
        if looks_like_file:
            path = Path(path_part)
            if not path.is_file():
                raise HandlerLoadError(f"{target}: no such file")
            mod_name = f"mta_handler_{abs(hash(str(path.resolve())))}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise HandlerLoadError(f"{target}: cannot load")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module  # dataclasses & co. look their module up
            spec.loader.exec_module(module)
            func_name = func_name or "email"
        else:
            if not func_name:
                raise HandlerLoadError(f"{target}: write package.module:function")
            module = importlib.import_module(path_part)
            if fresh:
                module = importlib.reload(module)
    except HandlerLoadError:
        raise
    except Exception as exc:
        raise HandlerLoadError(f"{target}: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, func_name, None)
    if fn is None:
        raise HandlerLoadError(f"{target}: no function {func_name!r}")
    if not inspect.iscoroutinefunction(fn):
        raise HandlerLoadError(f"{target}: {func_name} must be async def "
                               "email(message, env, ctx)")
    return fn


@dataclass
class Registry:
    handlers: dict[str, LoadedHandler] = field(default_factory=dict)
    settings: HandlersSettings | None = None

    @property
    def active(self) -> bool:
        return bool(self.handlers)

    def get(self, name: str) -> LoadedHandler | None:
        return self.handlers.get(name)

    @classmethod
    def load(cls, hs: HandlersSettings, *, fresh: bool = False) -> Registry:
        reg = cls(settings=hs)
        for entry in hs.registry:
            if entry.name in reg.handlers:
                raise HandlerLoadError(f"handler {entry.name!r} is registered twice")
            reg.handlers[entry.name] = _loaded(hs, entry, _import_target(entry.target, fresh))
        return reg


def _loaded(hs: HandlersSettings, e: HandlerEntry, fn: Callable[..., Any]) -> LoadedHandler:
    return LoadedHandler(
        name=e.name, target=e.target, function=fn,
        time_limit=float(e.time_limit if e.time_limit is not None else hs.time_limit),
        fallback=e.fallback or hs.fallback, forward_to=e.forward_to or hs.forward_to,
        vars={**_vars(hs.vars), **_vars(e.vars)},
        kv_namespaces=tuple(dict.fromkeys([*hs.kv_namespaces, *e.kv_namespaces])))


# Registries loaded for a settings object, so a reload that loaded fine is not
# imported a second time by the runner (keyed by id: the settings are not hashable).
_LOADED: dict[int, tuple[HandlersSettings, Registry]] = {}


def registry_for(hs: HandlersSettings) -> Registry:
    hit = _LOADED.get(id(hs))
    if hit is not None and hit[0] is hs:
        return hit[1]
    reg = Registry.load(hs)
    _remember(hs, reg)
    return reg


def _remember(hs: HandlersSettings, reg: Registry) -> None:
    if len(_LOADED) > 16:
        _LOADED.clear()
    _LOADED[id(hs)] = (hs, reg)


def reload_handlers(running: Settings, fresh: Settings) -> None:
    """SIGHUP: re-import every configured handler; on success the running settings take
    the new `handlers` section (the runner switches at the next message)."""
    try:
        reg = Registry.load(fresh.handlers, fresh=True)
    except HandlerLoadError as exc:
        log.error("handlers not reloaded, keeping the running ones: %s", exc,
                  extra={"event": "handlers.reload_failed"})
        return
    _remember(fresh.handlers, reg)
    running.handlers = fresh.handlers
    log.info("handlers reloaded: %s", ", ".join(reg.handlers) or "none",
             extra={"event": "handlers.reloaded"})
