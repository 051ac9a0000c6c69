"""Human review of low-confidence teacher labels in Label Studio.

- `labeling`: labeling configs per dataset kind, tasks with the teacher's answer as a prediction,
  parsing answers back, and the import file for runs without a server (pure, no network).
- `client`: `ReviewClient` (label-studio-sdk): idempotent project per dataset + prompt version,
  idempotent task import, pulling finished answers.
- `outbox`: `push_rows` / `sync_outbox` (rows wait in a JSONL outbox while the server is down) and
  `route_to_review` (server when configured, import file otherwise).

Merging answers into labels and the review statistics are in `potstill.review.merge`.
"""

from potstill.review.client import (
    ImportResult,
    ReviewClient,
    ReviewServerError,
    ReviewServerUnavailable,
    ReviewSettings,
)
from potstill.review.labeling import (
    KINDS,
    ReviewProjectSpec,
    build_task,
    build_tasks,
    label_config,
    parse_annotation,
    write_import_file,
)
from potstill.review.outbox import Outbox, PushResult, push_rows, route_to_review, sync_outbox

__all__ = [
    "KINDS",
    "ImportResult",
    "Outbox",
    "PushResult",
    "ReviewClient",
    "ReviewProjectSpec",
    "ReviewServerError",
    "ReviewServerUnavailable",
    "ReviewSettings",
    "build_task",
    "build_tasks",
    "label_config",
    "parse_annotation",
    "push_rows",
    "route_to_review",
    "sync_outbox",
    "write_import_file",
]
