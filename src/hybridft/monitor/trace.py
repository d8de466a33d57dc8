"""``hybridft trace REQUEST_ID``: one live answer back to the rows it was learnt from.

response (traffic log: version, arm, latency, label, feedback, review) -> model version ->
run, stage chain, spec, commit -> dataset fingerprints -> catalog entries -> source files (rows
counted now, against the catalog's count) and, for data made from reviewed traffic, the live
requests each row came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.tree import Tree

from hybridft.errors import UserError
from hybridft.registry.client import Registry
from hybridft.registry.lineage import describe_lineage, lineage_tree
from hybridft.serve.canary import CanaryStore, ServePaths
from hybridft.serve.review import FeedbackStore
from hybridft.telemetry.traffic_log import TrafficLog


def trace_request(request_id: str, serve_dir: str | Path, registry: Registry) -> dict[str, Any]:
    """Everything known about ``request_id``, down to source files and rows.

    Raises:
        UserError: The request is in neither the traffic log nor the request log.
    """
    paths = ServePaths(serve_dir)
    read = TrafficLog(paths.traffic_log).lookup(request_id)
    events = read.rows()
    answers = [
        {k: v for k, v in e.items() if k != "kind"} for e in events if e["kind"] == "request"
    ]
    if not answers:
        answers = _from_request_log(paths, request_id)
    if not answers:
        raise UserError(
            f"request {request_id!r}: not in the traffic log ({paths.traffic_log}) nor the "
            f"request log ({paths.traffic}); is --serve-dir the endpoint's folder?"
        )
    for answer in answers:
        answer["feedback"] = [
            {"success": e["success"], "source": e["feedback_source"], "at": e["ts"]}
            for e in events
            if e["kind"] == "feedback" and e["version"] == answer["version"]
        ]
        answer["review"] = [
            {"label": e["review_label"], "reviewer": e["reviewer"], "at": e["ts"]}
            for e in events
            if e["kind"] == "review" and e["version"] == answer["version"]
        ]
    versions = {}
    for answer in answers:
        key = f"{answer['model']}@{answer['version']}"
        if key not in versions:
            info = describe_lineage(registry, key)
            for entry in info["datasets"].values():
                entry["file_rows"] = [_file_rows(f) for f in entry["files"]]
            versions[key] = info
    skipped = [s.message() for s in read.skipped]
    return {"request_id": request_id, "answers": answers, "versions": versions, "skipped": skipped}


def _from_request_log(paths: ServePaths, request_id: str) -> list[dict[str, Any]]:
    """The sqlite request log's rows (a router without a traffic log, or before a flush)."""
    if not paths.traffic.is_file():
        return []
    rows = FeedbackStore(paths.traffic).db.read(
        "SELECT * FROM requests WHERE request_id = ?", (request_id,)
    )
    model = CanaryStore(paths.state).read().model if paths.state.is_file() else ""
    return [{**dict(r), "model": model} for r in rows]


def _file_rows(path: str) -> dict[str, Any]:
    """A source file's rows as they are now, and the live requests behind reviewed rows."""
    file = Path(path)
    out: dict[str, Any] = {"path": path, "exists": file.is_file()}
    if not file.is_file():
        return out
    lines = [x for x in file.read_text(encoding="utf-8").splitlines() if x.strip()]
    out["rows"] = len(lines)
    manifest = file.parent / "manifest.json"
    if manifest.is_file():
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
            ids = doc.get("files", {}).get(file.name, {}).get("request_ids")
        except (OSError, ValueError, AttributeError):
            ids = None
        if ids:
            out["request_ids"] = ids
    return out


def trace_tree(info: dict[str, Any]) -> Tree:
    """The trace as a rich tree: the answer at the root, source rows at the leaves."""
    root = Tree(f"[b]request {info['request_id']}[/]")
    for answer in info["answers"]:
        conf = answer.get("confidence")
        node = root.add(
            f"answered by {answer['model']}@{answer['version']} ({answer.get('arm')}), status "
            f"{answer.get('status_code')}, {1000 * (answer.get('latency_s') or 0):.0f} ms, label "
            f"{answer.get('predicted_label')!r}"
            + (f", confidence {conf:.2f}" if conf is not None else "")
        )
        for fb in answer.get("feedback", []):
            node.add(f"feedback: {'success' if fb['success'] else 'failure'} ({fb['source']})")
        for rv in answer.get("review", []):
            node.add(f"reviewed: label {rv['label']!r} by {rv['reviewer']}")
        lineage = info["versions"].get(f"{answer['model']}@{answer['version']}")
        if lineage is not None:
            tree = lineage_tree(lineage)
            node.children.append(tree)
            _add_rows(tree, lineage)
    for message in info.get("skipped", []):
        root.add(f"[yellow]{message}[/]")
    return root


def _add_rows(tree: Tree, lineage: dict[str, Any]) -> None:
    files = tree.add("source rows")
    for fp, entry in lineage["datasets"].items():
        for row in entry.get("file_rows", []):
            if not row["exists"]:
                files.add(f"[red]{row['path']}: missing[/] (catalogued {entry['rows']} rows, {fp})")
                continue
            single = len(entry.get("file_rows", [])) == 1
            same = (
                ""
                if not single or row["rows"] == entry["rows"]
                else f" (catalogued {entry['rows']})"
            )
            leaf = files.add(f"{row['path']}: rows 1-{row['rows']}{same}  {fp[:19]}")
            for rid in row.get("request_ids", [])[:20]:
                leaf.add(f"row from live request {rid}")
