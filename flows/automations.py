"""Apply an automation file (automations/*.yaml) with a notification block of yours.

``python -m flows.automations automations/notify-red.yaml --block slack-webhook/accord-ops``

The file's ``send-notification`` actions get the id of the block named ``--block`` (its
``<block-type-slug>/<block-name>``); an automation of the same name is replaced, so applying twice
leaves one.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml


def load_automation(path: Path, block_document_id: UUID | None = None) -> Any:
    """The automation in ``path`` (validated), its notification actions pointed at ``block_document_id``."""
    from prefect.events.schemas.automations import AutomationCore

    spec = yaml.safe_load(path.read_text())
    if block_document_id is not None:
        for action in spec.get("actions", []):
            if action.get("type") == "send-notification":
                action["block_document_id"] = str(block_document_id)
    return AutomationCore.model_validate(spec)


async def apply_automation(path: Path, block: str) -> UUID:
    """Create the automation of ``path`` with block ``block`` ("type-slug/name"), replacing one of its name."""
    from prefect.client.orchestration import get_client

    type_slug, _, name = block.partition("/")
    if not name:
        raise ValueError(f"--block wants <block-type-slug>/<block-name>, e.g. slack-webhook/accord-ops; got {block!r}")
    async with get_client() as client:
        document = await client.read_block_document_by_name(name=name, block_type_slug=type_slug)
        automation = load_automation(path, document.id)
        for existing in await client.read_automations_by_name(automation.name):
            await client.delete_automation(existing.id)
        return await client.create_automation(automation)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.automations", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--block", required=True, help="the notification block, <block-type-slug>/<block-name>")
    args = parser.parse_args(argv)
    automation_id = asyncio.run(apply_automation(args.file, args.block))
    print(f"automation {automation_id} created from {args.file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
