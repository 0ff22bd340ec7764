"""`stackwise keys ...`: the API keys `stackwise serve` checks."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from .common import JsonOpt
from .render import fmt_time, get_console, print_json


keys_app = typer.Typer(help="Create, list and revoke the API keys `stackwise serve` checks (Authorization: Bearer KEY).",
                       no_args_is_help=True)


@keys_app.command("create")
def keys_create(name: Annotated[str, typer.Argument(help="A name for the key (who or what uses it).")],
                rpm: Annotated[Optional[int], typer.Option("--rpm", help="Requests per minute the server answers "
                                                           "for this key (429 beyond); no limit by default.")] = None,
                as_json: JsonOpt = False) -> None:
    """Create a key and print it once: only a salted hash of it is kept (in the state folder, mode 0600)."""
    from ..keys import create_key

    key, record = create_key(name, rpm=rpm)
    if as_json:
        print_json({**record.public(), "key": key})
        return
    sys.stdout.write(key + "\n")
    get_console(stderr=True).print(f"key {record.name!r} created: store it now, it is not shown again. Clients send "
                                "'Authorization: Bearer KEY'.", markup=False)


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """List the keys: name, creation time and last 4 characters (never the key)."""
    from ..keys import read_keys

    records = [r.public() for r in read_keys()]
    if as_json:
        print_json(records)
        return
    from rich.table import Table

    table = Table("name", "created", "key")
    for r in records:
        table.add_row(str(r["name"]), fmt_time(float(r["created"])), f"...{r['last4']}")
    get_console().print(table)


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name (see `stackwise keys list`).")],
                as_json: JsonOpt = False) -> None:
    """Revoke a key: a running server refuses it from its next request on."""
    from ..keys import revoke_key

    revoke_key(name)
    if as_json:
        print_json({"name": name, "revoked": True})
        return
    get_console(stderr=True).print(f"key {name!r} revoked", markup=False)
