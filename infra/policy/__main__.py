"""Policy pack entry point: `pulumi preview --policy-pack infra/policy` runs this file."""

from pulumi_policy import EnforcementLevel, PolicyPack

from stackwise.infra.policy import POLICIES

PolicyPack(name="stackwise", enforcement_level=EnforcementLevel.MANDATORY, policies=POLICIES)
