"""Tell reviewers and operators: one Prefect automation per review and rollout event, each sending
through the notification block named ``lwd-reviewers`` (any kind: Slack, Microsoft Teams, email, a
custom webhook). Create that block in the Prefect UI (Blocks), then:

    python -m deployments.notifications            # also a build step of `prefect deploy` (prefect.yaml)

Idempotent: the automations are replaced by name. Without the block it says how to make one and
changes nothing.
"""

from __future__ import annotations

import argparse
import sys

from tasks.events import (
    AWAITING_REVIEW,
    ROLLOUT_COMPLETED,
    ROLLOUT_REFUSED,
    ROLLOUT_ROLLED_BACK,
)

BLOCK_NAME = "lwd-reviewers"

# Subject and body per event: Jinja over the event Prefect hands the action.
MESSAGES = {
    AWAITING_REVIEW: (
        "LWD: {{ event.resource['prefect.resource.name'] }} awaits review",
        "Gate mean success {{ event.payload.gate_mean_success }} (champion: v{{ event.payload.champion }}). "
        "Answer the suspended review run in Prefect, or move alias champion in MLflow: {{ event.payload.url }}"),
    ROLLOUT_COMPLETED: (
        "LWD: {{ event.resource['prefect.resource.name'] }} rolled out",
        "Status {{ event.payload.status }} on {{ event.payload.live_robots | length }} live robots "
        "(distribution p50 {{ event.payload.distribution_latency_p50_s }} s)."),
    ROLLOUT_ROLLED_BACK: (
        "LWD: {{ event.resource['prefect.resource.name'] }} rolled back",
        "The canary did not show it is not worse: {{ event.payload.reason }}. Champion is back on "
        "v{{ event.payload.champion }}."),
    ROLLOUT_REFUSED: (
        "LWD: {{ event.resource['prefect.resource.name'] }} refused",
        "{{ event.payload.reason }}. Champion: v{{ event.payload.champion }}."),
}


def automation_name(event: str) -> str:
    return f"lwd notify {event}"


def find_block(name: str = BLOCK_NAME):
    """The block document named ``name`` (of whichever notification type), or None."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for document in client.read_block_documents():
            if document.name == name:
                return document
    return None


def apply(block_name: str = BLOCK_NAME) -> list[str]:
    """Create (or replace) the automations; the names of those made, empty without the block."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    block = find_block(block_name)
    if block is None:
        return []
    made = []
    for event, (subject, body) in MESSAGES.items():
        name = automation_name(event)
        try:
            Automation.read(name=name).delete()
        except ValueError:
            pass  # first time
        Automation(
            name=name, description=f"Send {event} to the {block_name!r} notification block",
            trigger=EventTrigger(expect={event}, match={"prefect.resource.id": "lwd.model.*"},
                                 posture=Posture.Reactive, threshold=1, within=0),
            actions=[SendNotification(block_document_id=block.id, subject=subject, body=body)],
        ).create()
        made.append(name)
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", default=BLOCK_NAME, help="notification block name")
    args = parser.parse_args(argv)
    made = apply(args.block)
    if not made:
        print(f"no notification block named {args.block!r}: create one in the Prefect UI (Blocks -> Slack "
              "Webhook, Microsoft Teams, Email, Custom Webhook...) and run `python -m deployments.notifications` "
              "again; no automations changed")
        return 0
    print("automations: " + ", ".join(made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
