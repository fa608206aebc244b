"""What a subcommand whose engine has not landed yet does: say so, and exit 3.

The subcommand's options are already final (they are the interface users script against);
only the engine behind them is missing. Exit code 3 tells scripts it is not a usage error.
"""

from edge_zo.errors import UserError

NOT_YET_EXIT_CODE = 3


def not_yet(command: str, issue: str) -> UserError:
    return UserError(
        f"`edge-zo {command}` is not in this build yet (it lands with {issue}); "
        "`edge-zo export` and `edge-zo profiles` work now",
        exit_code=NOT_YET_EXIT_CODE,
    )
