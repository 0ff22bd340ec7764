"""GCP monthly billing budget with e-mail alerts."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi

from ._provider import gcp


@dataclass
class BudgetArgs:
    amount_usd: float
    """The stack's `monthlyBudgetUsd`."""
    billing_account: str
    """Billing account id the budget belongs to."""
    project: str
    """Only this project's spend counts."""
    emails: list[str]
    labels: dict[str, str]
    after: list[pulumi.Resource] = field(default_factory=list)
    """What must exist first: the platform's enabled APIs (Billing Budgets, Monitoring)."""


class Budget(pulumi.ComponentResource):
    def __init__(self, name: str, args: BudgetArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:gcp:Budget", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, depends_on=args.after)
        channels = [gcp.monitoring.NotificationChannel(
            f"{name}-email-{i}", project=args.project, type="email", display_name=f"budget {email}",
            labels={"email_address": email}, user_labels=args.labels, opts=child)
            for i, email in enumerate(args.emails)]
        number = gcp.organizations.get_project_output(project_id=args.project).number
        self.budget = gcp.billing.Budget(
            f"{name}-monthly", billing_account=args.billing_account, display_name=f"{name} monthly",
            budget_filter={"projects": [number.apply(lambda n: f"projects/{n}")], "calendar_period": "MONTH"},
            amount={"specified_amount": {"currency_code": "USD", "units": str(int(args.amount_usd))}},
            threshold_rules=[{"threshold_percent": 0.5, "spend_basis": "FORECASTED_SPEND"},
                             {"threshold_percent": 0.8, "spend_basis": "FORECASTED_SPEND"},
                             {"threshold_percent": 1.0}],
            all_updates_rule={"monitoring_notification_channels": [c.id for c in channels],
                              "disable_default_iam_recipients": False},
            opts=child)
        self.register_outputs({"budget": self.budget.id})
