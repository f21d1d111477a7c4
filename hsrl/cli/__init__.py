"""The ``hsrl`` command.

    hsrl export ...      embeddings of a dataset to sharded .npy + parquet
    hsrl index ...       build / search / evaluate a FAISS index
    hsrl eval ...        text | image | retrieval evaluation of an encoder
    hsrl serve ...       the HTTP embedding and search service
    hsrl reproduce ...   the paper's figures and tables at laptop scale

Each subcommand lives in its own module of this package (the libraries below hold no argument parser) and is
imported only when used, so
``hsrl --help`` is instant and a missing optional extra only affects its command.
Errors a user can cause end in one line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: subcommand -> (module, function taking argv and returning an exit status, summary)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "export": ("hsrl.cli.export", "cli_main", "encode a dataset with a model into sharded embeddings"),
    "index": ("hsrl.cli.index", "cli_main", "build, search and evaluate FAISS indexes"),
    "eval": ("hsrl.cli.eval", "main", "evaluate an encoder: text | image | retrieval"),
    # The service is a separate layer above hsrl (it imports hsrl, never the reverse): named, not imported.
    "serve": ("hsrl_service.cli", "main", "run the HTTP embedding and search service"),
    "reproduce": ("hsrl.cli.reproduce", "cli_main", "reproduce the paper's figures at laptop scale"),
}
#: the extra that brings a command's optional dependencies
EXTRAS = {"index": "cpu", "eval": "train", "serve": "serve", "reproduce": "train"}


def version() -> str:
    """The installed distribution's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("hsrl")
    except PackageNotFoundError:
        return "0+unknown"


def _usage() -> str:
    lines = ["usage: hsrl <command> [options]   (hsrl --version)", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (_, _, summary) in COMMANDS.items()]
    lines += ["", "Run `hsrl <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``hsrl <command> ...``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    if args[0] in {"-V", "--version"}:
        print(f"hsrl {version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"hsrl: error: unknown command {name!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module_name, function, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        extra = EXTRAS.get(name, "train")
        print(f"hsrl {name}: not available in this install ({error}); try `pip install 'hsrl[{extra}]'`",
              file=sys.stderr)  # fmt: skip
        return 2
    return int(getattr(module, function)(rest) or 0)
