"""Pulumi entry point (`main: infra/` in Pulumi.yaml): read the stack config once, build, export.

Pulumi runs this file as a script, so it imports the installed package by its absolute name.
"""

import pulumi

from stackwise.errors import ConfigError
from stackwise.infra.program import build, export, read_config

try:
    config, secrets = read_config()
except ConfigError as exc:
    # RunError prints the message without a Python traceback.
    raise pulumi.RunError(str(exc)) from None

export(build(config, secrets))
