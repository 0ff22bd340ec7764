"""Azure monthly consumption budget on the stack's resource group, with e-mail alerts."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pulumi

from ._provider import azure


@dataclass
class BudgetArgs:
    amount_usd: float
    """The stack's `monthlyBudgetUsd`."""
    resource_group_id: pulumi.Input[str]
    """The budget's scope: everything the stack created lives in this resource group."""
    emails: list[str]


class Budget(pulumi.ComponentResource):
    def __init__(self, name: str, args: BudgetArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:azure:Budget", name, None, opts)
        start = dt.date.today().replace(day=1).isoformat() + "T00:00:00Z"
        notifications = {
            f"{kind.lower()}-{pct}": {"enabled": True, "operator": "GreaterThan", "threshold": pct,
                                      "threshold_type": kind, "contact_emails": args.emails}
            for pct, kind in ((50, "Forecasted"), (80, "Forecasted"), (100, "Actual"))
        }
        self.budget = azure.consumption.Budget(
            f"{name}-monthly", scope=args.resource_group_id, amount=args.amount_usd, category="Cost",
            time_grain="Monthly", time_period={"start_date": start}, notifications=notifications,
            # The start date must be the first of a month and must not move on later updates.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["timePeriod"]))
        self.register_outputs({"budget": self.budget.name})
