"""One module per `edge-zo` subcommand: its options and a thin `run` that delegates."""
