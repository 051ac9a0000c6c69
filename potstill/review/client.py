"""The Label Studio review client: one project per dataset + prompt version, tasks in, answers out.

Built on label-studio-sdk 2.x. The API token comes from the environment only (`LABEL_STUDIO_URL`,
`LABEL_STUDIO_API_KEY`) or from the caller (e.g. a Prefect Secret block read in a task); it is kept
out of reprs, logs and exception messages. Errors are mapped to two exceptions: `ReviewServerUnavailable`
(connection refused, timeouts, 502-504: worth queueing in the outbox and retrying later) and
`ReviewServerError` (everything the server rejected, like a wrong token: retrying will not help).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from potstill.review.labeling import ReviewProjectSpec, label_config, parse_annotation, task_sort_key
from potstill.review.merge import HumanAnnotation

log = logging.getLogger(__name__)
T = TypeVar("T")
UNAVAILABLE_STATUS = (502, 503, 504)
VIEW_TITLE = "most uncertain first"
PAGE_SIZE = 500


class ReviewServerError(RuntimeError):
    """Label Studio refused a request (bad token, bad config, ...); the message never holds the token.
    `status` is the HTTP status when the server answered (None when it could not be reached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def is_rejection(self) -> bool:
        """The server refused this request's content (4xx but not the token, or 500): sending the same
        tasks again fails again, so an outbox sets them aside rather than retrying them forever."""
        return self.status is not None and self.status not in (401, 403, *UNAVAILABLE_STATUS)


class ReviewServerUnavailable(ReviewServerError):
    """Label Studio could not be reached; the rows can wait in the outbox."""


@dataclass(frozen=True)
class ReviewSettings:
    """Where Label Studio is and the API token to use (never shown in reprs)."""

    url: str
    api_key: str = field(repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReviewSettings | None:
        """From LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY; None when neither is set (review goes to a
        file); a half configuration is an error rather than a silent fallback."""
        env = os.environ if env is None else env
        url = (env.get("LABEL_STUDIO_URL") or "").strip()
        key = (env.get("LABEL_STUDIO_API_KEY") or "").strip()
        if not url and not key:
            return None
        if not url:
            raise ReviewServerError("LABEL_STUDIO_API_KEY is set but LABEL_STUDIO_URL is not; set both")
        if not key:
            raise ReviewServerError(
                f"LABEL_STUDIO_URL is {url} but LABEL_STUDIO_API_KEY is not set; set both"
            )
        return cls(url=url.rstrip("/"), api_key=key)


@dataclass(frozen=True)
class ImportResult:
    project_id: int
    created: int  # tasks created by this call
    skipped: int  # tasks whose row id was already in the project
    task_ids: list[int] = field(default_factory=list)


class ReviewClient:
    """Talks to one Label Studio server. Idempotent: creating a project or importing rows twice is a
    no-op the second time (projects are found by title, tasks by `row_id` in their data)."""

    def __init__(self, settings: ReviewSettings, *, timeout: float = 30.0, max_retries: int = 1) -> None:
        # Imported here: the SDK pulls pandas (~1 s), which runs that only write an import file skip.
        from label_studio_sdk import LabelStudio

        self.url = settings.url.rstrip("/")
        self.__key = settings.api_key
        self._deferred_teacher: dict[int, str] = {}  # project -> teacher to follow after the next import
        self._sdk = self._call(
            "connecting",
            lambda: LabelStudio(
                base_url=self.url, api_key=settings.api_key, timeout=timeout, max_retries=max_retries
            ),
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> ReviewClient | None:
        settings = ReviewSettings.from_env(env)
        return None if settings is None else cls(settings, **kwargs)

    def __repr__(self) -> str:
        return f"ReviewClient(url={self.url!r})"

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one SDK call, turning its errors into ours (with `from None`: the SDK's chained errors
        hold response headers and bodies we do not want in a flow's logs)."""
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn()
        except httpx.TransportError as e:  # refused, reset, timeouts
            raise ReviewServerUnavailable(
                f"Label Studio at {self.url} is unreachable while {what} ({type(e).__name__}: {e})"
            ) from None
        except ApiError as e:
            code = e.status_code
            if code in (401, 403):
                raise ReviewServerError(
                    f"Label Studio at {self.url} rejected the API token ({code}); "
                    "set LABEL_STUDIO_API_KEY to a valid token for this server",
                    status=code,
                ) from None
            if code in UNAVAILABLE_STATUS:
                raise ReviewServerUnavailable(
                    f"Label Studio at {self.url} is unavailable ({code}) while {what}", status=code
                ) from None
            raise ReviewServerError(
                f"Label Studio at {self.url} answered {code} while {what}: {self._redact(str(e.body))[:500]}",
                status=code,
            ) from None

    def _redact(self, text: str) -> str:
        """A server may quote the request back (headers, a token in the data): never the key."""
        return text.replace(self.__key, "***") if self.__key else text

    def whoami(self) -> dict[str, Any]:
        """The token's user; a cheap check that URL and token work."""
        user = self._call("checking the token", self._sdk.users.whoami)
        return {"id": user.id, "email": user.email}

    # ---- projects

    def find_project(self, spec: ReviewProjectSpec) -> int | None:
        """The project with exactly this title (the oldest, should someone have made a copy)."""
        found = self._call(
            "looking up the project", lambda: list(self._sdk.projects.list(title=spec.title, page_size=100))
        )
        ids = sorted(p.id for p in found if p.title == spec.title)
        return ids[0] if ids else None

    def ensure_project(self, spec: ReviewProjectSpec) -> int:
        """Find or create the review project; returns its id.

        New projects use uncertainty sampling with the teacher as model version (the label stream serves
        the lowest-confidence prediction first) and get a Data Manager tab sorted by prediction score.
        An existing project keeps its labeling config (annotations were made against it) but follows a
        new teacher id, so the sampling keeps working after the teacher changes.
        """
        pid = self.find_project(spec)
        if pid is not None:
            project = self._call("reading the project", lambda: self._sdk.projects.get(id=pid))
            if getattr(project, "model_version", None) != spec.teacher:
                self._follow_teacher(pid, spec.teacher)
            return pid
        created = self._call(
            "creating the project",
            lambda: self._sdk.projects.create(
                title=spec.title,
                description=f"{spec.key}\nRows the teacher ({spec.teacher}) was least sure of; "
                "most uncertain first. Pick 'reject' (with a reason) to exclude a broken row.",
                label_config=label_config(spec),
                sampling="Uncertainty sampling",
                model_version=spec.teacher,
                maximum_annotations=spec.annotators_per_row,
                show_skip_button=True,
                show_collab_predictions=True,
            ),
        )
        pid = int(created.id)
        self._call(
            "creating the review tab",
            lambda: self._sdk.views.create(
                project=pid, data={"title": VIEW_TITLE, "ordering": ["tasks:predictions_score"]}
            ),
        )
        log.info("created Label Studio project %r (id %s) at %s", spec.title, pid, self.url)
        return pid

    def _follow_teacher(self, pid: int, teacher: str) -> None:
        """Point uncertainty sampling at the new teacher's predictions. Label Studio refuses a model
        version no prediction carries yet (a new teacher, same prompt version), so then it waits until
        `import_tasks` has imported that teacher's predictions."""
        try:
            self._call(
                "updating the model version", lambda: self._sdk.projects.update(id=pid, model_version=teacher)
            )
            self._deferred_teacher.pop(pid, None)
        except ReviewServerError as e:
            if isinstance(e, ReviewServerUnavailable) or "Model version doesn't exist" not in str(e):
                raise
            self._deferred_teacher[pid] = teacher

    def project_url(self, project_id: int) -> str:
        return f"{self.url}/projects/{project_id}/data"

    # ---- tasks

    def _tasks(self, project_id: int, fields: str) -> list[Any]:
        return self._call(
            "listing tasks",
            lambda: list(self._sdk.tasks.list(project=project_id, fields=fields, page_size=PAGE_SIZE)),
        )

    def existing_row_ids(self, project_id: int) -> set[str]:
        return {
            str(t.data["row_id"]) for t in self._tasks(project_id, "task_only") if "row_id" in (t.data or {})
        }

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> ImportResult:
        """Import tasks (from `build_tasks`) whose row id is not in the project yet, most uncertain first.

        Safe to repeat after a failure half-way: rows that made it are skipped the next time.
        """
        existing = self.existing_row_ids(project_id)
        fresh: dict[str, Mapping[str, Any]] = {}
        for t in sorted(tasks, key=task_sort_key):
            rid = str(t["data"]["row_id"])
            if rid not in existing and rid not in fresh:
                fresh[rid] = t
        if not fresh:
            return ImportResult(project_id, 0, len(tasks))
        response = self._call(
            "importing tasks",
            lambda: self._sdk.projects.import_tasks(
                id=project_id, request=list(fresh.values()), return_task_ids=True
            ),
        )
        if project_id in self._deferred_teacher:
            self._follow_teacher(project_id, self._deferred_teacher[project_id])
        return ImportResult(
            project_id,
            created=int(response.task_count or 0),
            skipped=len(tasks) - len(fresh),
            task_ids=list(response.task_ids or []),
        )

    # ---- answers

    def pull(self, spec: ReviewProjectSpec, project_id: int | None = None) -> list[HumanAnnotation]:
        """Finished answers: not drafts (Label Studio keeps those apart from annotations), not skipped
        (`was_cancelled`), not empty submits; tasks nobody answered give nothing. Read-only, so pulling
        again returns the same answers."""
        pid = project_id if project_id is not None else self.find_project(spec)
        if pid is None:
            return []
        out: list[HumanAnnotation] = []
        for task in self._tasks(pid, "all"):
            data = task.data or {}
            if "row_id" not in data:
                continue  # not a potstill task (imported by hand)
            for ann in _as_dicts(task.annotations or []):
                parsed = parse_annotation(data, {**ann, "task": ann.get("task", task.id)}, spec.kind)
                if parsed is not None and (parsed.answer is not None or parsed.rejected):
                    out.append(parsed)
        return sorted(out, key=lambda a: (a.row_id, a.annotation_id or 0))


def _as_dicts(items: Iterable[Any]) -> list[dict[str, Any]]:
    """The SDK gives annotations as dicts or pydantic models depending on the endpoint."""
    return [i if isinstance(i, dict) else i.model_dump() for i in items]
