"""The `edge-zo` command: parses arguments and hands each subcommand to its module.

Each subcommand lives in its own module that defines `HELP` (one line), `add_arguments(parser)`
and `run(args) -> int`. Modules are imported only when their subcommand runs or when help is
built, and none of them may import torch at module level.

edge_zo's own subcommands are `COMMANDS`. Others come from packages installed beside it, found
through the `edge_zo.commands` entry-point group: the host exporter (`edge_zo_export`, the
`[export]` extra, pyproject.toml) registers `export` there, so a device install without it
has an `export` that says, in one line, how to install it (`PLUGINS`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from edge_zo import __version__
from edge_zo.errors import EXIT_SIGINT, UserError

# subcommand -> module; the order is the order `edge-zo --help` lists them in.
COMMANDS = {
    "profiles": "edge_zo.commands.profiles",
    "plan": "edge_zo.commands.plan",
    "finetune": "edge_zo.commands.finetune",
    "eval": "edge_zo.commands.evaluate",
    "deploy": "edge_zo.commands.deploy",
    "predict": "edge_zo.commands.predict",
    "fleet": "edge_zo.commands.fleet",
}


ENTRY_POINTS = "edge_zo.commands"  # entry-point group of subcommands from other packages
# Subcommands another package provides: name -> (what it does, how to install it when absent).
PLUGINS = {
    "export": ("export a Hugging Face model to an ONNX training bundle (host side: the exporter)",
               "the exporter is not installed here; on a host (it needs torch): "
               "pip install torch==2.13.0 'edge-zo[export]'; a device needs only the bundle it writes"),
}


def plugin_modules() -> dict[str, str]:
    """name -> module of the subcommands other packages register (the entry-point group).

    From a source checkout that was never installed (PYTHONPATH=repo), the group is not in
    any metadata: there the exporter package beside edge_zo is used where it is importable.
    """
    from importlib.metadata import entry_points
    from importlib.util import find_spec

    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINTS)}
    if "export" not in found and find_spec("edge_zo_export") is not None:
        found["export"] = "edge_zo_export.command"
    return found


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error names the subcommand's --help as the place to look."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each default said once: not for options whose help already says it, nor for None
    (the config file or the run decides), False (a flag) or an empty list."""

    def _get_help_string(self, action):
        if action.default in (None, False, [], ()) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edge-zo",
        description="Fine-tune language models on the device with forward passes only.",
    )
    parser.add_argument("--version", action="version", version=f"edge-zo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    plugins = plugin_modules()
    for name in PLUGINS:  # first, as `edge-zo --help` always listed export
        _add_plugin(sub, name, plugins.get(name))
    for name, module_name in COMMANDS.items():
        _add(sub, name, importlib.import_module(module_name))
    return parser


def _add(sub, name: str, module) -> None:
    cmd = sub.add_parser(name, help=module.HELP, description=module.HELP, formatter_class=_HelpFormatter)
    module.add_arguments(cmd)
    cmd.set_defaults(_run=module.run)


def _add_plugin(sub, name: str, module_name: str | None) -> None:
    """A subcommand from another package; where it is not installed, one that says how."""
    try:
        module = importlib.import_module(module_name) if module_name else None
    except ImportError:
        module = None  # registered but not importable: as if not installed
    if module is not None:
        return _add(sub, name, module)
    what, install = PLUGINS[name]
    cmd = sub.add_parser(name, help=f"{what} [not installed]", description=f"{what}: {install}",
                         formatter_class=_HelpFormatter, add_help=False)
    cmd.stub = True  # `parse` takes no options for it: whatever was asked, the answer is `install`

    def missing(args) -> int:
        raise UserError(install)
    cmd.set_defaults(_run=missing)


def main(argv: list[str] | None = None) -> int:
    # The controller's numpy must not spin BLAS threads that steal ONNX Runtime's cores
    # (measured: a 2-thread forward went from 60 to 107 ms). Set before numpy loads.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.formatwarning = _one_line_warning
    args = parse(build_parser(), sys.argv[1:] if argv is None else list(argv))
    try:
        return int(args._run(args) or 0)
    except UserError as err:
        print(f"edge-zo {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"edge-zo {args.command}: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except BrokenPipeError:
        # `edge-zo profiles | head`: the reader left; what it read was whole. Python's
        # recipe: point stdout at devnull so the flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The subcommand's options, positionals and key=value overrides in any order
    (`finetune --bundle B steps=2 --data F`): argparse's intermixed parsing, which it
    offers per parser but not across subcommands, so the subcommand's parser does it."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if not argv or argv[0] not in action.choices:
        return parser.parse_args(argv)  # --help, --version, a missing or unknown command
    sub = action.choices[argv[0]]
    args = sub.parse_known_args([])[0] if getattr(sub, "stub", False) else sub.parse_intermixed_args(argv[1:])
    args.command = argv[0]
    return args


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    # edge-zo's own warnings (a CUDA fallback) are for the user: one line, no source
    if category.__module__.startswith("edge_zo"):
        return f"edge-zo: warning: {message}\n"
    return f"{filename}:{lineno}: {category.__name__}: {message}\n"


if __name__ == "__main__":
    sys.exit(main())
