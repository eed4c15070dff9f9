"""Commands, their recipes, and the Registry that holds them.

A command has one or more *recipes*: the lists of parameter names it can be called with.
They come from the handler's signature (required parameters, then each optional one in
turn) or are given explicitly. Picking a recipe and binding the params to the handler's
arguments (each through its getter, midgram.engine.coercion) follow OpenSIPS 3.6, error
texts included (docs/compatibility.md, "Recipe matching").
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias, TypeVar

from midgram.engine.access import Principal, parse_principals
from midgram.engine.coercion import UNCHANGED, Coercer, coercer_for
from midgram.engine.events import Event, Events
from midgram.engine.stats import Statistics
from midgram.errors import InvalidParams
from midgram.wire.jsonrpc import Params

__all__ = [
    "Command",
    "Handler",
    "Registry",
    "bind_arguments",
    "make_command",
    "recipes_from_signature",
    "select_recipe",
]

Handler: TypeAlias = Callable[..., Any]
F = TypeVar("F", bound=Handler)

# OpenSIPS's -32602 data texts (docs/compatibility.md, "Error codes and texts").
NAMED_ONLY: Final = "Command only supports named parameters"
AMBIGUOUS: Final = "Ambiguous call, use named parameters instead"
WRONG_COUNT: Final = "Too few or too many parameters"
NAMES_MISMATCH: Final = "Named parameters do not match"

# What a set of commands may be called (``@name`` in an acl rule).
_SET_NAME: Final = re.compile(r"[A-Za-z0-9_.-]+")


#: A parameter as a binder takes it: its name, the type its getter hands on unchanged (None:
#: none), the getter.
_Binding: TypeAlias = tuple[str, type | None, Coercer]


@dataclass(frozen=True)
class Command:
    """One MI command. ``recipes`` lists the parameter names it accepts, in OpenSIPS order."""

    name: str
    handler: Handler
    recipes: tuple[tuple[str, ...], ...]
    help: str = ""
    module: str = "core"
    named_only: bool = False
    coercers: Mapping[str, Coercer] = field(default_factory=dict)
    is_async: bool = False
    #: Who may call it unless the operator's ``acl`` rules say otherwise (empty: anyone).
    acl: tuple[Principal, ...] = ()
    #: The named sets of commands it is in (``@readonly`` in an ``acl`` rule).
    sets: frozenset[str] = frozenset()

    #: Whether a call without params is valid (it has the empty recipe): the common case
    #: that dispatch serves without looking at recipes at all.
    takes_nothing: bool = field(init=False, default=False)
    #: The recipes indexed as OpenSIPS's scan would find them (built once, used per call):
    #: by parameter count for positional calls, by name set for named ones.
    by_count: Mapping[int, tuple[tuple[str, ...], ...]] = field(init=False, repr=False)
    by_names: Mapping[frozenset[str], tuple[str, ...]] = field(init=False, repr=False)
    #: For each recipe of ``by_names``: its names in order, each with the type its getter
    #: hands on as it is (``coercion.UNCHANGED``; None: always called) and the getter.
    named_binders: Mapping[frozenset[str], tuple[_Binding, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"bad MI command name {self.name!r}")
        if not self.recipes:
            raise ValueError(f"command {self.name!r} has no recipe")
        for named in self.sets:
            if not _SET_NAME.fullmatch(named):
                raise ValueError(f"command {self.name!r}: bad set name {named!r}")
        object.__setattr__(self, "takes_nothing", () in self.recipes)
        by_count: dict[int, tuple[tuple[str, ...], ...]] = {}
        by_names: dict[frozenset[str], tuple[str, ...]] = {}
        for recipe in self.recipes:
            if recipe:  # a call with params never picks the empty recipe
                by_count[len(recipe)] = (*by_count.get(len(recipe), ()), recipe)
                by_names.setdefault(frozenset(recipe), recipe)  # the first one wins
        object.__setattr__(self, "by_count", by_count)
        object.__setattr__(self, "by_names", by_names)
        coercers = self.coercers
        binders = {
            names: tuple((name, UNCHANGED.get(coercers[name]), coercers[name]) for name in recipe)
            for names, recipe in by_names.items()
            if all(name in coercers for name in recipe)
        }
        object.__setattr__(self, "named_binders", binders)


def recipes_from_signature(handler: Handler) -> tuple[tuple[str, ...], ...]:
    """Required parameters, then one more recipe for each optional one, in order.

    ``def f(a, b=1, c=2)`` -> ``[["a"], ["a","b"], ["a","b","c"]]``.
    """
    required: list[str] = []
    optional: list[str] = []
    for param in _mi_parameters(handler):
        (required if param.default is inspect.Parameter.empty else optional).append(param.name)
    recipes = [tuple(required)]
    for i in range(1, len(optional) + 1):
        recipes.append((*required, *optional[:i]))
    return tuple(recipes)


def _mi_parameters(handler: Handler) -> list[inspect.Parameter]:
    params = list(inspect.signature(handler).parameters.values())
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TypeError(
                f"MI handler {handler.__qualname__}: parameter {param.name!r} must be "
                "nameable (no *args, **kwargs or positional-only parameters)"
            )
    return params


def _coercers(handler: Handler, names: set[str]) -> dict[str, Coercer]:
    try:
        hints = typing.get_type_hints(handler)
    except (NameError, TypeError):
        hints = {}
    return {name: coercer_for(hints.get(name, Any)) for name in names}


def make_command(
    handler: Handler,
    *,
    name: str | None = None,
    help: str = "",
    module: str = "core",
    recipes: Sequence[Sequence[str]] | None = None,
    named_only: bool = False,
    acl: str | None = None,
    sets: Iterable[str] = (),
) -> Command:
    """Build a ``Command`` from a function, its recipes from the signature unless given;
    ``acl``: who may call it by default (principals as an ``acl`` rule writes them)."""
    all_recipes = (
        recipes_from_signature(handler)
        if recipes is None
        else tuple(tuple(recipe) for recipe in recipes)
    )
    if any(len(set(recipe)) != len(recipe) for recipe in all_recipes):
        raise TypeError(f"a recipe of {name or handler.__name__} names a parameter twice")
    accepted = {p.name for p in _mi_parameters(handler)}
    used = {n for recipe in all_recipes for n in recipe}
    if unknown := used - accepted:
        raise TypeError(f"recipe names {sorted(unknown)} are not parameters of {name}")
    try:
        principals = () if acl is None else parse_principals(acl)
    except ValueError as exc:
        raise ValueError(f"acl of MI command {name or handler.__name__}: {exc}") from None
    return Command(
        name=name or handler.__name__,
        handler=handler,
        recipes=all_recipes,
        help=help or inspect.getdoc(handler) or "",
        module=module,
        named_only=named_only,
        coercers=_coercers(handler, used),
        is_async=inspect.iscoroutinefunction(handler),
        acl=principals,
        sets=frozenset(sets),
    )


class Registry:
    """The MI commands (in registration order), statistics and events one server exposes."""

    def __init__(
        self, module: str = "app", stats: Statistics | None = None, events: Events | None = None
    ) -> None:
        self.module = module
        self.stats = stats if stats is not None else Statistics()
        self.events = events if events is not None else Events(self.stats)
        self._commands: dict[str, Command] = {}
        # The handlers of the sync commands that take no params, by name: what a call
        # without params runs, found with one lookup (Dispatcher.answer).
        self._bare: dict[str, Handler] = {}
        # The sync commands' handlers with their named binders (Command.named_binders), by
        # name: what a call with named params runs (the native Dispatcher.answer).
        self._named: dict[str, tuple[Handler, Mapping[frozenset[str], tuple[_Binding, ...]]]] = {}

    def command(
        self,
        name: str | None = None,
        *,
        help: str = "",
        recipes: Sequence[Sequence[str]] | None = None,
        named_only: bool = False,
        module: str | None = None,
        acl: str | None = None,
        sets: Iterable[str] = (),
    ) -> Callable[[F], F]:
        """Decorator registering a function as an MI command (``@mi.command()``). ``acl``:
        who may call it unless the operator's rules say otherwise, e.g. ``"root, @ops"``
        (docs/security.md); ``sets``: the named sets it is in, e.g. ``{"readonly"}``."""

        def register(handler: F) -> F:
            self.add(
                make_command(
                    handler,
                    name=name,
                    help=help,
                    module=module or self.module,
                    recipes=recipes,
                    named_only=named_only,
                    acl=acl,
                    sets=sets,
                )
            )
            return handler

        return register

    def event(self, name: str) -> Event:
        """Publish the event ``name`` (``events_list`` lists it); raise it with
        ``.raise_event(params)`` from anywhere (docs/events.md)."""
        return self.events.declare(name)

    def add(self, command: Command) -> None:
        if command.name in self._commands:
            raise ValueError(f"MI command {command.name!r} is already registered")
        self._commands[command.name] = command
        if command.takes_nothing and not command.is_async:
            self._bare[command.name] = command.handler
        if command.named_binders and not command.is_async:
            self._named[command.name] = (command.handler, command.named_binders)

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    def lookup_function(self) -> Callable[[str], Command | None]:
        """``get`` without the method call, for the dispatcher's per-datagram lookup; it
        still sees commands added later."""
        return self._commands.get

    def bare_handlers(self) -> dict[str, Handler]:
        """By name, the handler to call without arguments for a call without params, where
        that is all there is to it (a sync command with the empty recipe). The live table,
        for the dispatcher's fast paths: read it, never change it."""
        return self._bare

    def named_handlers(
        self,
    ) -> dict[str, tuple[Handler, Mapping[frozenset[str], tuple[_Binding, ...]]]]:
        """By name, a sync command's handler and its binders for named params
        (``Command.named_binders``). The live table, for the dispatcher's fast paths: read
        it, never change it."""
        return self._named

    def names(self) -> list[str]:
        return list(self._commands)

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands.values())

    def __len__(self) -> int:
        return len(self._commands)

    def __contains__(self, name: object) -> bool:
        return name in self._commands


# --- recipe matching (docs/compatibility.md, "Recipe matching") ---------------------------


def select_recipe(command: Command, params: Params) -> tuple[str, ...]:
    """Pick the recipe OpenSIPS would pick, or raise InvalidParams with its text."""
    if params is None:
        for recipe in command.recipes:
            if not recipe:
                return recipe
        raise InvalidParams(WRONG_COUNT)
    if type(params) is list:
        if command.named_only:
            raise InvalidParams(NAMED_ONLY)
        candidates = command.by_count.get(len(params), ())
        if len(candidates) == 1:
            return candidates[0]
        raise InvalidParams(AMBIGUOUS if candidates else WRONG_COUNT)
    # OpenSIPS takes the first recipe of the same count whose every name is present: with
    # names unique within a recipe, that is the first recipe with exactly this name set.
    named = command.by_names.get(frozenset(params))
    if named is not None:
        return named
    raise InvalidParams(NAMES_MISMATCH if len(params) in command.by_count else WRONG_COUNT)


def bind_arguments(command: Command, params: Params) -> dict[str, Any]:
    """The handler's keyword arguments for these params, coerced by OpenSIPS's getters."""
    if type(params) is dict:
        # Named params, the common way to pass them: the recipe select_recipe would pick,
        # found by the names alone, and each getter called only for a value it would change.
        binder = command.named_binders.get(frozenset(params))
        if binder is not None:
            named: dict[str, Any] = {}
            for name, unchanged, coerce in binder:
                value = params[name]
                named[name] = value if type(value) is unchanged else coerce(value, name)
            return named
    recipe = select_recipe(command, params)
    if params is None:
        return {}
    coercers = command.coercers
    # Loops, not comprehensions: on CPython 3.11 a comprehension is a call of its own, a
    # quarter of the time it takes to bind three named params.
    kwargs: dict[str, Any] = {}
    if isinstance(params, list):
        for name, value in zip(recipe, params, strict=True):
            kwargs[name] = coercers[name](value, name)
    else:
        for name in recipe:
            kwargs[name] = coercers[name](params[name], name)
    return kwargs
