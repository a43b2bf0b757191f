"""The `duet` command: one entry point, one subcommand per component.

Each subcommand module exposes `register(subparsers)` that adds its parser with
`set_defaults(func=run)`, where `run(args) -> int` is the exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

Registrar = Callable[[argparse._SubParsersAction], None]


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments print one line (`duet generate: error: ...`) and exit with code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _registrars() -> list[Registrar]:
    from duet import control_plane_cmd, generate_cmd, model_cmd, up_cmd, worker_cmd

    registrars: list[Registrar] = [
        generate_cmd.register,
        model_cmd.register,
        worker_cmd.register,
        control_plane_cmd.register,
        up_cmd.register,
    ]
    try:
        from control_plane.autoscaler.cli import register as autoscaler
    except ImportError:
        return registrars
    return [*registrars, autoscaler]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="duet",
        description="duet: disaggregated prefill/decode serving for Ling-2.6 hybrid models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    sub.required = True
    for register in _registrars():
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
