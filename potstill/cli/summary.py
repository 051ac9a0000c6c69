"""The end-of-run summary for the person at the terminal: what happened and where to look."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

# Every row a kind may report; a row shows when one of the three models has it (a classifier's accuracy
# and macro-F1, math's exact match, free text's ROUGE-L, ...).
ROWS = [
    ("accuracy", "{}_accuracy", "{:.1%}"),
    ("macro-F1", "{}_macro_f1", "{:.3f}"),
    ("exact match", "{}_exact_match", "{:.1%}"),
    ("no answer read", "{}_no_answer_rate", "{:.1%}"),
    ("no choice read", "{}_no_choice_rate", "{:.1%}"),
    ("ROUGE-L", "{}_rouge_l", "{:.3f}"),
    ("answer length (words)", "{}_length_words", "{:.1f}"),
    ("tokens / answer", "{}_tokens_per_answer", "{:.1f}"),
    ("generated tokens/s", "{}_generated_tokens_per_s", "{:.0f}"),
    ("rows/s (batched)", "{}_rows_per_s", "{:.1f}"),
    ("latency / row (ms)", "{}_latency_ms", "{:.0f}"),
    ("parameters (M)", "{}_params", "{:.1f}"),
    ("size on disk (MB)", "{}_size_mb", "{:.0f}"),
]


def metrics_table(metrics: dict[str, float]) -> Table:
    table = Table(title="gold split")
    table.add_column("")
    for name in ("teacher", "student (untrained)", "student"):
        table.add_column(name, justify="right")
    for title, key, fmt in ROWS:
        if all(metrics.get(key.format(who)) is None for who in ("teacher", "student_base", "student")):
            continue
        cells = []
        for who in ("teacher", "student_base", "student"):
            value = metrics.get(key.format(who))
            if value is not None and key.endswith("params"):
                value = value / 1e6
            cells.append(fmt.format(value) if value is not None else "-")
        table.add_row(title, *cells)
    return table


def render(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    m, reg = summary["metrics"], summary["registered"]
    console.rule(f"[bold]potstill distill: task {summary.get('task', '')} done")
    console.print(
        f"labeled [bold]{summary['rows_labeled']}[/] rows with the teacher; "
        f"[bold]{summary['rows_to_review']}[/] routed to review ({summary['review_queue']}); "
        f"student trained on [bold]{summary['rows_trained_on']}[/] rows "
        f"({summary['train_steps']} steps, {summary['train_tokens_per_s']:.0f} tokens/s)"
    )
    review = summary.get("review")
    if review:
        console.print(review_line(review))
    for v in summary.get("validation", []):
        flag = "[green]passed[/]" if v["passed"] else "[yellow]rows quarantined[/]"
        line = f"validated {v['name']}: {v['valid_rows']} valid, {v['quarantined_rows']} quarantined ({flag})"
        if v["quarantined_rows"]:
            line += f" -> {v['quarantine_file']}"
        console.print(line)
    console.print(metrics_table(m))
    baseline = m.get("majority_baseline")
    console.print(
        f"agreement teacher/student {m['agreement']:.1%}; "
        + (f"majority baseline {baseline:.1%}; " if baseline is not None else "")
        + f"{summary['gold_rows']} gold rows"
    )
    console.print(
        f"registered [bold]{reg['model_name']}[/] version [bold]{reg['version']}[/] "
        f"as {' + '.join(reg['aliases'])}: {'; '.join(reg['reasons'])}"
    )
    console.print(f"MLflow run {summary['run_id']} in {summary['tracking_uri']}")
    console.print(f"load it: mlflow.pyfunc.load_model('models:/{reg['model_name']}@champion')")
    console.print(
        "open the UIs: [bold]make mlflow-ui[/] (http://127.0.0.1:5000)  "
        "[bold]make prefect-ui[/] (http://127.0.0.1:4200)"
    )


def review_line(review: dict[str, Any]) -> str:
    """Where the routed rows went and what the reviewers' verdicts changed."""
    human = f"{review['human_rows']} human labels in training, {review['rejected_rows']} rows rejected"
    if review["target"] == "file":
        return (
            f"review: Label Studio is not configured, so the review tasks were written to "
            f"{review['location']}. Start a server with [bold]make review-server[/] (127.0.0.1:8080), "
            "export LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, and the next run sends them there "
            f"(or import the file by hand). {human}."
        )
    if review["target"] == "outbox":
        return f"review: [yellow]{review['message']}[/]. {human}."
    refused = (
        f" [yellow]{review['rejected']} tasks refused by the server, kept with its answer beside the "
        "review outbox (outbox.jsonl.rejected.jsonl).[/]"
        if review.get("rejected")
        else ""
    )
    return (
        f"review: {review['created']} new tasks in Label Studio, most uncertain first: {review['location']}."
        f"{refused} {human}; `potstill review sync` pulls new answers."
    )
