"""The ``millrace`` command: run a flow on this machine, print its graph, or print a Dataflow
manifest that runs it on Kubernetes.

``millrace run FILE_OR_MODULE[:ATTR]`` runs the flow on one worker (:func:`run_main`), on
threads of this process (``-w``, :func:`cluster_main`) or on local processes (``-p``,
:func:`spawn_cluster`); ``millrace visualize`` prints its Mermaid graph
(:mod:`millrace.visualize`); ``millrace manifest FILE --name N`` prints a Dataflow carrying the
file's code (:mod:`millrace.manifest`). The target is found as :mod:`millrace.locate` says.

A wrong argument is one line and exit code 2; an error of the flow itself is its traceback and
exit code 1; Ctrl-C stops the flow (nothing is committed for the unfinished epoch) and exits
with 130.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from types import TracebackType

import click

from ..common.errors import MetricsServerError
from ..common.settings import SettingsError, read
from ..dataflow import Dataflow
from ..execution import PeriodicEpochConfig, cluster_main, run_main, spawn_cluster
from ..locate import FlowNotFound, Target, load, load_target
from ..manifest import (
    MAX_PROCESSES,
    MAX_WORKERS_PER_PROCESS,
    ManifestError,
    check_name,
    check_volume_size,
    dataflow_manifest,
    to_yaml,
)
from ..recovery import SqliteRecoveryConfig
from ..visualize import to_mermaid
from .progress import Counter, ProgressLine, instrument

__all__ = ["main", "millrace"]

PROG = "millrace"
TARGET_HELP = "FILE_OR_MODULE[:ATTR]: a Python file or an importable module, and the Dataflow in it (default `flow`)."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def millrace() -> None:
    """Run a millrace flow on this machine, print its graph, or print a Dataflow manifest for Kubernetes."""


def _load(target: str) -> Dataflow:
    try:
        return load(target)
    except FlowNotFound as exc:
        raise click.UsageError(str(exc)) from None


@millrace.command(epilog=TARGET_HELP)
@click.argument("target", metavar="FILE_OR_MODULE[:ATTR]")
@click.option(
    "-p", "--processes", type=click.IntRange(min=1), default=1, show_default=True, help="Local processes to run."
)
@click.option(
    "-w", "--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Worker threads per process."
)
@click.option(
    "--recovery-dir",
    # It must exist, as SqliteRecoveryConfig wants: a mistyped path does not start afresh.
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Keep recovery snapshots (SQLite) in this existing directory, and resume from them.",
)
@click.option(
    "--epoch-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Length of an epoch: how often state is snapshotted.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (process i of -p: PORT+i). "
    "Default: $MILLRACE_METRICS_PORT, else off.",
)
def run(
    target: str,
    processes: int,
    workers: int,
    recovery_dir: Path | None,
    epoch_seconds: float,
    metrics_port: int | None,
) -> None:
    """Run a flow on this machine until it ends (Ctrl-C stops it).

    On a terminal, a line on stderr shows the items read so far, the rate and the epoch.
    """
    if metrics_port is None:
        try:
            metrics_port = read(os.environ, "MILLRACE_METRICS_PORT")
        except SettingsError as exc:
            raise click.UsageError(str(exc)) from None
    if metrics_port is not None and metrics_port + processes - 1 > 65535:
        raise click.BadParameter(
            f"{metrics_port} leaves no room for {processes} processes (each takes the next port)",
            param_hint="'--metrics-port'",
        )
    try:
        _run(_load(target), processes, workers, recovery_dir, epoch_seconds, metrics_port)
    except KeyboardInterrupt:
        # Past click, which would answer with an empty line and "Aborted!".
        raise Stopped from None
    except MetricsServerError as exc:
        # Not the flow's error: one line, as a wrong argument gets.
        raise click.ClickException(str(exc)) from None


class Stopped(Exception):
    """Ctrl-C stopped the run."""


def _run(
    flow: Dataflow,
    processes: int,
    workers: int,
    recovery_dir: Path | None,
    epoch_seconds: float,
    metrics_port: int | None = None,
) -> None:
    epoch_config = PeriodicEpochConfig(timedelta(seconds=epoch_seconds))
    recovery_config = SqliteRecoveryConfig(recovery_dir) if recovery_dir is not None else None
    with ExitStack() as stack:
        if sys.stderr.isatty():
            line = stack.enter_context(ProgressLine(sys.stderr))
            flow = instrument(flow, stack.enter_context(Counter(line.port)))
        if processes > 1:
            spawn_cluster(
                flow,
                epoch_config=epoch_config,
                recovery_config=recovery_config,
                proc_count=processes,
                worker_count_per_proc=workers,
                metrics_port=metrics_port,
            )
        elif workers > 1:
            cluster_main(
                flow,
                [],
                0,
                epoch_config=epoch_config,
                recovery_config=recovery_config,
                worker_count_per_proc=workers,
                metrics_port=metrics_port,
            )
        else:
            run_main(flow, epoch_config=epoch_config, recovery_config=recovery_config, metrics_port=metrics_port)


@millrace.command(epilog=TARGET_HELP)
@click.argument("target", metavar="FILE_OR_MODULE[:ATTR]")
def visualize(target: str) -> None:
    """Print a flow's graph in Mermaid: its steps, and where items are exchanged by key."""
    click.echo(to_mermaid(_load(target)))


@millrace.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="The Dataflow's name: lowercase letters, digits and '-', from a letter.")
@click.option(
    "-p",
    "--processes",
    type=click.IntRange(1, MAX_PROCESSES),
    default=1,
    show_default=True,
    help="Worker pods, one cluster process each.",
)
@click.option(
    "-w",
    "--workers",
    type=click.IntRange(1, MAX_WORKERS_PER_PROCESS),
    default=1,
    show_default=True,
    help="Worker threads per pod.",
)
@click.option("--recovery", metavar="SIZE", help="Keep snapshots on a volume of SIZE (256Mi, 1Gi) per pod.")
@click.option("--image", help="The worker image (default: the operator's).")
def manifest(file: Path, name: str, processes: int, workers: int, recovery: str | None, image: str | None) -> None:
    """Print a Dataflow manifest running FILE on Kubernetes, its code inline.

    FILE must define `flow`, a Dataflow; it is imported to check that, which builds the flow
    but does not run it. Apply the manifest with `millrace manifest ... | kubectl apply -f -`.
    """
    # The arguments first: they are checked without running the file's code.
    try:
        check_name(name, processes)
    except ManifestError as exc:
        raise click.BadParameter(str(exc), param_hint="'--name'") from None
    try:
        if recovery is not None:
            check_volume_size(recovery)
    except ManifestError as exc:
        raise click.BadParameter(str(exc), param_hint="'--recovery'") from None
    try:
        load_target(Target(str(file), "flow", file=file))
    except FlowNotFound as exc:
        raise click.UsageError(str(exc)) from None
    try:
        code = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise click.UsageError(f"{file} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    try:
        document = dataflow_manifest(
            name, code, processes=processes, workers_per_process=workers, recovery_size=recovery, image=image
        )
    except ManifestError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(to_yaml(document), nl=False)


_OWN_CODE = (str(Path(click.__file__).parent), str(Path(__file__).parent))


def _past_the_command(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` without its first frames in this command and in click, which say nothing about
    the error (the entry point it called, and what that called, stay)."""
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename.startswith(_OWN_CODE):
        tb = tb.tb_next
    return tb


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: the group above, with one-line errors and no traceback of ours."""
    try:
        millrace.main(args=list(argv) if argv is not None else None, prog_name=PROG, standalone_mode=False)
    except click.ClickException as exc:
        # One line, as the other errors: the usage is one `--help` away.
        click.echo(f"{PROG}: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except (Stopped, KeyboardInterrupt, click.Abort):
        click.echo(f"{PROG}: stopped (Ctrl-C)", err=True)
        return 130
    except BrokenPipeError:
        return 1  # `millrace visualize ... | head`: the reader left
    except Exception as exc:
        # The flow's own error: its traceback says where in the user's code.
        traceback.print_exception(exc.with_traceback(_past_the_command(exc.__traceback__)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
