"""Progress on stderr (rich), shown only when stderr is a terminal and ``--quiet`` is not given:
a bar that counts sweep points, and the step a run is at."""

import sys
from contextlib import contextmanager


def wanted(quiet=False) -> bool:
    """Whether to show progress: stderr is a terminal and the user did not ask for quiet."""
    return not quiet and sys.stderr.isatty()


@contextmanager
def bar(description, total, show):
    """A progress bar of ``total`` items; yields ``advance(description=None)``, called once per item
    done (a no-op when ``show`` is false). The bar is removed when the block ends."""
    if not show:
        yield lambda description=None: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)

        def advance(description=None):
            progress.update(task, advance=1, **({"description": description} if description else {}))

        yield advance


@contextmanager
def steps(scenario, show):
    """The step a run is at: yields ``progress(step)`` for :func:`~vmemcore.scenario.run_scenario`,
    which calls it before each step (boot is the first item)."""
    name = scenario.path or "scenario"
    with bar(f"{name}: boot", len(scenario.steps) + 1, show) as advance:
        yield lambda step: advance(f"{name}: steps[{step.index}] {step.op}")
        advance()
