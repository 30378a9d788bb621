"""The command line's options: flags and ``SYNCWS_*`` variables, derived from the option table.

Every flag and variable comes from :data:`syncws.base.options.OPTIONS`; this
module only turns rows into argparse arguments and resolves, for each option,
the flag, else the variable, else the default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..base.errors import ConfigurationError
from ..base.options import LIMITS, OPTIONS, Kind, Option, Scope, from_environ, metavar


def _converter(option: Option) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return option.parse(text)
        except ConfigurationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = option.name  # argparse names the option in its error message
    return convert


def add_option(group: argparse._ActionsContainer, option: Option) -> None:
    if option.kind is Kind.FLAG:
        default = f"; ${option.env_var}=1 does the same"
    else:
        default = f"; default: ${option.env_var}, else {option.default_text}"
    common: dict[str, Any] = {
        "dest": option.name,
        "default": argparse.SUPPRESS,  # absent: the variable, then the default (resolve_options)
        "help": f"{option.help}{' (none disables it)' if option.nullable else ''}{default}".replace("%", "%%"),
    }
    if option.kind is Kind.FLAG:
        group.add_argument(option.flag, action="store_const", const=True, **common)
    elif option.kind is Kind.BOOL:
        group.add_argument(option.flag, action=argparse.BooleanOptionalAction, **common)
    else:
        group.add_argument(option.flag, type=_converter(option), metavar=metavar(option), **common)


def given_options(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None, names: Iterable[str] | None = None
) -> dict[str, Any]:
    """The options set by a flag, else by a ``SYNCWS_*`` variable (all, or those in ``names``).

    Raises ConfigurationError (a ValueError) naming the variable for a bad value.
    """
    environ = os.environ if environ is None else environ
    wanted = {o.name for o in OPTIONS} if names is None else set(names)
    found = from_environ(environ, wanted - set(vars(args)))
    found.update({name: value for name, value in vars(args).items() if name in wanted})
    return found


def server_options(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The limit options for :class:`~syncws.server.server.Server` that a flag or variable set."""
    return given_options(args, environ, {option.name for option in LIMITS})


def resolve_options(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> None:
    """Give every option that is not a limit its value in ``args``: flag, else variable, else default."""
    others = [option for option in OPTIONS if option.scope is not Scope.LIMIT]
    given = given_options(args, environ, {option.name for option in others})
    for option in others:
        setattr(args, option.name, given.get(option.name, option.default))
