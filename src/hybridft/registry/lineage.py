"""``hybridft lineage``: from a model reference back to its runs, stages and dataset fingerprints."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from rich.tree import Tree

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
    }


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
        for source, fingerprint in (link.get("sources") or {}).items():
            node.add(f"data {source}: {fingerprint}")
        parent = node
    if not info["chain"]:
        for source, fingerprint in info["fingerprints"].items():
            run.add(f"data {source}: {fingerprint}")
    return root
