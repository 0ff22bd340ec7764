"""The `stackwise` command line (Typer + Rich).

Exit codes: 0 ok, 1 a job failed or was cancelled, 2 bad input or config, 3 over budget (plan),
4 the promotion gate refused (promote), 70 an unexpected error inside stackwise (a bug: the message
names the log file, under <state>/logs/, that holds the traceback), 130 interrupted.
Every command that returns data takes `--json`. Heavy modules load inside commands only, so
`stackwise --help` answers at once.
"""

from __future__ import annotations

import sys

from ..errors import StackwiseError
from . import ci, curate, deploy, feedback, finetune, images, index, jobs, keys, models, offers, pipeline, rag, redteam, stacks
from .common import app
from .render import get_console

# Commands, then command groups, in the order `stackwise --help` lists them.
app.command("stacks")(stacks.stacks)
app.command("sync")(stacks.sync)
app.command("index")(index.index)
app.command("search")(index.search)
app.command("finetune")(finetune.finetune)
app.command("eval")(models.eval_command)
app.command("promote")(models.promote)
app.command("deploy")(deploy.deploy)
app.command("endpoints")(deploy.endpoints)
app.command("serve")(deploy.serve)
app.command("offers")(offers.offers)
app.command("curate")(curate.curate_command)
app.command("plan")(stacks.plan)
app.command("quickstart")(stacks.quickstart)
app.add_typer(jobs.jobs_app, name="jobs")
app.add_typer(images.image_app, name="image")
app.add_typer(index.indexes_app, name="indexes")
app.add_typer(models.models_app, name="models")
app.add_typer(rag.rag_app, name="rag")
app.add_typer(feedback.feedback_app, name="feedback")
app.add_typer(redteam.redteam_app, name="redteam")
app.add_typer(pipeline.pipeline_app, name="pipeline")
app.add_typer(ci.ci_app, name="ci")
app.add_typer(keys.keys_app, name="keys")

__all__ = ["app", "main"]


EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE: an unexpected error inside stackwise (a bug); the traceback is in a log file


def _crash_log(exc: BaseException) -> str:
    """Write `exc`'s traceback (secrets masked) to `<state>/logs/crash-<time>-<pid>.log`, else to
    the temporary folder when the state folder cannot be written; return the file's path."""
    import os
    import tempfile
    import time
    import traceback
    from pathlib import Path

    from ..secrets import redact

    text = redact("".join(traceback.format_exception(exc)))
    header = f"stackwise {' '.join(sys.argv[1:])[:2000]}\n{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n\n"
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    folders = []
    try:
        from ..paths import state_dir

        folders.append(state_dir() / "logs")
    except Exception:  # noqa: BLE001 - a broken state folder setting must not hide the crash
        pass
    folders.append(Path(tempfile.gettempdir()))
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(redact(header) + text, encoding="utf-8")
            return str(path)
        except OSError:
            continue
    return "(no writable folder for a log: the state folder and the temporary folder both refused)"


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def main() -> None:
    """Console entry point: StackwiseError becomes a message and an exit code, never a traceback.

    Anything else is a bug: one line naming the error and the log file that holds its traceback,
    exit code 70 (EXIT_INTERNAL)."""
    try:
        app()
    except StackwiseError as exc:
        console = get_console(stderr=True)
        console.print("error:", style="bold red", end=" ")
        console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one top-level handler
        from ..secrets import redact

        log = _crash_log(exc)
        sys.stderr.write(f"error: unexpected {type(exc).__name__} inside stackwise: "
                         f"{_one_line(redact(str(exc)))}\n  the traceback is in {log}\n"
                         "  fix: this is a bug in stackwise; please report it with that file "
                         f"(exit code {EXIT_INTERNAL})\n")
        sys.exit(EXIT_INTERNAL)
