"""pulumi_aws, loaded one resource module at a time (see infra/providers.py)."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pulumi_aws as aws
else:
    from ..providers import provider

    aws = provider("pulumi_aws")
