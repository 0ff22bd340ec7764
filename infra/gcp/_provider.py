"""pulumi_gcp, loaded one resource module at a time (see infra/providers.py)."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pulumi_gcp as gcp
else:
    from ..providers import provider

    gcp = provider("pulumi_gcp")
