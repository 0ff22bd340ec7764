"""AWS monthly budget with e-mail alerts (AWS Budgets)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from ._provider import aws


@dataclass
class BudgetArgs:
    amount_usd: float
    """The stack's `monthlyBudgetUsd`."""
    emails: list[str]
    """Who is told at 50 % and 80 % forecast and 100 % actual spend."""
    env: str
    """The budget counts costs tagged `env=<env>` (activate the tag for cost allocation)."""
    tags: dict[str, str]


class Budget(pulumi.ComponentResource):
    def __init__(self, name: str, args: BudgetArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:aws:Budget", name, None, opts)
        notifications = [
            {"comparison_operator": "GREATER_THAN", "threshold": pct, "threshold_type": "PERCENTAGE",
             "notification_type": kind, "subscriber_email_addresses": args.emails}
            for pct, kind in ((50, "FORECASTED"), (80, "FORECASTED"), (100, "ACTUAL"))
        ]
        self.budget = aws.budgets.Budget(
            f"{name}-monthly", budget_type="COST", limit_amount=f"{args.amount_usd:.2f}", limit_unit="USD",
            time_unit="MONTHLY", cost_filters=[{"name": "TagKeyValue", "values": [f"user:env${args.env}"]}],
            notifications=notifications, tags=args.tags, opts=pulumi.ResourceOptions(parent=self))
        self.register_outputs({"budget": self.budget.name})
