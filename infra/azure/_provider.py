"""pulumi_azure_native, loaded one resource module at a time (see infra/providers.py)."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pulumi_azure_native as azure
else:
    from ..providers import provider

    azure = provider("pulumi_azure_native")
