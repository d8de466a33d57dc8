"""``hybridft lineage``: from a model reference back to its runs, stages, dataset fingerprints and
source files (the data catalog's provenance), and forward to its aliases with their audited moves."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from rich.tree import Tree

from hybridft.registry.audit import default_audit_path, read_audit
from hybridft.registry.catalog import get_dataset
from hybridft.registry.client import Registry


def describe_lineage(registry: Registry, ref: str) -> dict[str, Any]:
    """Fingerprints -> run -> stage chain -> version -> aliases, for one model reference."""
    version = registry.resolve(ref)
    model = registry.client.get_registered_model(version.name)
    aliases = sorted(a for a, v in (model.aliases or {}).items() if str(v) == version.version)
    run = registry.client.get_run(version.run_id)
    chain: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = registry.client.download_artifacts(version.run_id, "lineage.json", tmp)
            chain = json.loads(Path(path).read_text())
        except Exception:  # runs logged before lineage.json existed: the tags still tell
            chain = []
    return {
        "model": version.name,
        "version": version.version,
        "aliases": aliases,
        "run_id": version.run_id,
        "run_name": run.info.run_name,
        "git_commit": version.tags.get(
            "hybridft.git_commit", run.data.tags.get("hybridft.git_commit", "")
        ),
        "spec_sha256": version.tags.get("hybridft.spec_sha256", ""),
        "fingerprints": {
            k.removeprefix("hybridft.fingerprint."): v
            for k, v in version.tags.items()
            if k.startswith("hybridft.fingerprint.")
        },
        "chain": chain,
        "datasets": _datasets(registry, version.tags),
        "alias_moves": _alias_moves(registry, version.name, version.version),
    }


def _datasets(registry: Registry, tags: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Catalog provenance per fingerprint: files, rows, generator, review status."""
    out = {}
    for key, fp in tags.items():
        if key.startswith("hybridft.fingerprint."):
            entry = get_dataset(registry, fp)
            if entry is not None:
                out[fp] = {
                    "files": entry.sources,
                    "rows": entry.rows,
                    "generator": entry.generator,
                    "seed": entry.seed,
                    "status": entry.status,
                    "reviewer": entry.reviewer,
                }
    return out


def _alias_moves(registry: Registry, name: str, version: str) -> list[dict[str, Any]]:
    """Audited alias moves onto this version (who, when, from -> to, reason)."""
    records = read_audit(
        default_audit_path(registry.tracking_uri), model=name, action="promote", outcome="ok"
    )
    return [
        {"alias": r.alias, "who": r.who, "when": r.when, "from": r.from_version, "reason": r.reason}
        for r in records
        if r.to_version == version
    ]


def lineage_tree(info: dict[str, Any]) -> Tree:
    """The lineage as a rich tree, sources at the leaves."""
    aliases = ", ".join(f"@{a}" for a in info["aliases"]) or "no alias"
    root = Tree(f"[b]{info['model']}@{info['version']}[/]  ({aliases})")
    run = root.add(
        f"run {info['run_name']} ({info['run_id']})  commit {info['git_commit'] or '?'}  "
        f"spec {info['spec_sha256'][:12] or '?'}"
    )
    parent = run
    for link in reversed(info["chain"]):
        digest = (link.get("weights_sha256") or "")[:12]
        node = parent.add(f"{link['name']}  weights {digest or '?'}")
        if link.get("name") == "base":
            _base_node(node, link)
        for source, fingerprint in (link.get("sources") or {}).items():
            _data_node(node, source, fingerprint, info.get("datasets", {}))
        parent = node
    if not info["chain"]:
        for source, fingerprint in info["fingerprints"].items():
            _data_node(run, source, fingerprint, info.get("datasets", {}))
    for move in info.get("alias_moves", []):
        was = f"v{move['from']}" if move["from"] else "unset"
        root.add(
            f"@{move['alias']} moved {was} -> v{info['version']} by {move['who']} at "
            f"{move['when']}" + (f": {move['reason']}" if move["reason"] else "")
        )
    return root


def _base_node(node: Tree, link: dict[str, Any]) -> None:
    """Where the base came from: the general corpus it was pretrained on, or its reference."""
    corpus = link.get("corpus")
    if corpus:
        node.add(
            f"corpus {corpus['name']}: {corpus['fingerprint']} ({corpus['documents']:,} documents, "
            f"{corpus['chars']:,} characters, Python {corpus['python']})"
        )
    elif link.get("model_base"):
        node.add(f"model.base {link['model_base']}")


def _data_node(parent: Tree, source: str, fingerprint: str, datasets: dict[str, Any]) -> None:
    node = parent.add(f"data {source}: {fingerprint}")
    entry = datasets.get(fingerprint)
    if entry is None:
        node.add("not in the data catalog")
        return
    made = entry["generator"] + (f" seed {entry['seed']}" if entry["seed"] is not None else "")
    review = entry["status"] + (f" by {entry['reviewer']}" if entry["reviewer"] else "")
    node.add(f"{entry['rows']} rows, {made}, {review}")
    for file in entry["files"]:
        node.add(f"file {file}")
