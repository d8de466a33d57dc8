"""A Hugging Face model card (``README.md``) for one model version, with governance sections.

Everything comes from what the run and the version already recorded in MLflow: tags, ``eval/...``
metrics, and the artifacts ``lineage.json``, ``mixture.json``, ``packages.json``, ``spec.json``.
Nothing missing is fatal: the card says what was not recorded instead.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from hybridft.evaluate.model_index import model_index, task_metrics
from hybridft.registry.approvals import approvals
from hybridft.registry.client import ModelRef, Registry
from hybridft.registry.gates import CONTAMINATION, ECE, evaluate_gate
from hybridft.registry.lineage import describe_lineage
from hybridft.registry.policy import Policy

CARD_ARTIFACT = "model_card.md"
CARD_TAG = "hybridft.model_card"
BRIER = "eval/brier"
SECTIONS = (
    "Model details",
    "Intended use",
    "Out-of-scope use",
    "Limitations",
    "Risk rating",
    "Training",
    "Evaluation",
    "Approvals",
    "Gate verdict",
)
DEFAULT_INTENDED_USE = "Research and internal evaluation of fine-tuned assistants."
DEFAULT_OUT_OF_SCOPE = "Unreviewed production use; decisions about people without human review."
DEFAULT_LIMITATIONS = "Scores cover only the held-out tasks listed under Evaluation."
NOT_RECORDED = "not recorded"


def parse_front_matter(text: str) -> dict[str, Any]:
    """The YAML between the first two ``---`` lines of a card (``{}`` when there is none)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    try:
        end = next(i for i, line in enumerate(lines[1:], 1) if line.strip() == "---")
    except StopIteration:
        return {}
    return yaml.safe_load("\n".join(lines[1:end])) or {}


def build_card(
    registry: Registry,
    ref: str | ModelRef,
    policy: Policy | None = None,
    intended_use: str = DEFAULT_INTENDED_USE,
    out_of_scope: str = DEFAULT_OUT_OF_SCOPE,
    limitations: str = DEFAULT_LIMITATIONS,
    risk_rating: str = "medium",
) -> str:
    """Render the model card of one version.

    Args:
        registry: The MLflow store.
        ref: ``name@version``, ``name@alias`` or a resolved ``ModelRef``.
        policy: When given, the card shows this policy's gate verdict for the version.
        intended_use: Text of the "Intended use" section.
        out_of_scope: Text of the "Out-of-scope use" section.
        limitations: Text of the "Limitations" section.
        risk_rating: e.g. low / medium / high.

    Returns:
        The card: YAML front matter (``base_model``, ``datasets``, ``tags``, ``model-index``)
        followed by Markdown sections.
    """
    text_ref = f"{ref.name}@{ref.version}" if isinstance(ref, ModelRef) else ref
    info = describe_lineage(registry, text_ref)
    mv = registry.client.get_model_version(info["model"], info["version"])
    run = registry.client.get_run(info["run_id"])
    metrics = dict(run.data.metrics)
    packages = _run_json(registry, info["run_id"], "packages.json")
    spec = _run_json(registry, info["run_id"], "spec.json")
    mixture = _run_json(registry, info["run_id"], "mixture.json")
    stages = _stage_names(info["chain"], run.data.tags.get("hybridft.stage_chain", ""))
    front = _front_matter(info, mv.tags, metrics, stages)
    body = [
        f"# {info['model']}@{info['version']}",
        _section("Model details", _details(info, mv.tags, spec, packages)),
        _section("Intended use", intended_use),
        _section("Out-of-scope use", out_of_scope),
        _section("Limitations", limitations),
        _section("Risk rating", f"**{risk_rating}**"),
        _section("Training", _training(info, stages, mixture)),
        _section("Evaluation", _evaluation(metrics, mv.tags, run.data.tags)),
        _section("Approvals", _approvals(mv)),
        _section("Gate verdict", _gate(registry, policy, info)),
    ]
    yaml_text = yaml.safe_dump(front, sort_keys=False, allow_unicode=True)
    return f"---\n{yaml_text}---\n\n" + "\n".join(body)


def write_card(registry: Registry, ref: str | ModelRef, out_path: str | Path, **kw: Any) -> Path:
    """Write ``build_card(registry, ref, **kw)`` to ``out_path`` (parents created)."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_card(registry, ref, **kw), encoding="utf-8")
    return out


def log_card(registry: Registry, ref: str | ModelRef, **kw: Any) -> str:
    """Log the card as the run artifact ``model_card.md`` and tag the version with its URI.

    Returns:
        The artifact URI, also stored in the version tag ``hybridft.model_card``.
    """
    version = registry.resolve(ref) if isinstance(ref, str) else ref
    with tempfile.TemporaryDirectory() as tmp:
        path = write_card(registry, version, Path(tmp) / CARD_ARTIFACT, **kw)
        registry.client.log_artifact(version.run_id, str(path))
    uri = f"{registry.client.get_run(version.run_id).info.artifact_uri}/{CARD_ARTIFACT}"
    registry.client.set_model_version_tag(version.name, version.version, CARD_TAG, uri)
    return uri


# -- reading the run ------------------------------------------------------------------------------
def _run_json(registry: Registry, run_id: str, name: str) -> Any:
    """A JSON artifact of the run, or None when it was never logged."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = registry.client.download_artifacts(run_id, name, tmp)
            return json.loads(Path(path).read_text())
        except Exception:  # absent (older runs, hand-registered versions) or unreadable
            return None


def _stage_names(chain: list[dict[str, Any]], chain_tag: str) -> list[str]:
    if chain:
        return [c["name"] for c in chain if c.get("name") != "base"]
    return [s.strip() for s in chain_tag.split("->") if s.strip() and s.strip() != "base"]


# -- front matter ---------------------------------------------------------------------------------
def _dataset_refs(fingerprints: dict[str, str]) -> list[str]:
    return [f"{source}@{fp}" for source, fp in sorted(fingerprints.items())]


def _front_matter(
    info: dict[str, Any], tags: dict[str, str], metrics: dict[str, float], stages: list[str]
) -> dict[str, Any]:
    front: dict[str, Any] = {}
    base = info["chain"][0].get("path") if info["chain"] else tags.get("hybridft.parent")
    if base:
        front["base_model"] = base
    front["library_name"] = "transformers"
    datasets = _dataset_refs(info["fingerprints"])
    if datasets:
        front["datasets"] = datasets
    front["tags"] = ["hybridft", *stages]
    index = model_index(info["model"], metrics, info["fingerprints"])
    if index:
        front["model-index"] = index
    return front


# -- sections -------------------------------------------------------------------------------------
def _section(title: str, body: str) -> str:
    return f"\n## {title}\n\n{body.strip()}\n"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _details(info: dict[str, Any], tags: dict[str, str], spec: Any, packages: Any) -> str:
    seed = tags.get("hybridft.seed") or (str(spec["seed"]) if spec and "seed" in spec else None)
    rows = [
        ("Model", f"{info['model']}@{info['version']}"),
        ("Aliases", ", ".join(f"@{a}" for a in info["aliases"]) or "none"),
        ("Run", f"{info['run_name']} ({info['run_id']})"),
        ("Git commit", info["git_commit"] or NOT_RECORDED),
        ("Spec sha256", info["spec_sha256"] or NOT_RECORDED),
        ("Seed", seed or NOT_RECORDED),
    ]
    lines = ["| Field | Value |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in rows)]
    if isinstance(packages, dict) and packages:
        lines += ["", "Package versions:", ""]
        lines += [f"- {name}: {ver}" for name, ver in sorted(packages.items())]
    else:
        lines += ["", "Package versions: not recorded (no `packages.json` artifact)."]
    return "\n".join(lines)


def _mixture_text(mix: Any) -> str:
    if not isinstance(mix, dict) or not mix:
        return "realised mixture not recorded"
    parts = []
    for source, share in sorted(mix.items()):
        parts.append(f"{source} {share:.3f}" if isinstance(share, int | float) else f"{source}")
    return "realised mixture: " + ", ".join(parts)


def _training(info: dict[str, Any], stages: list[str], mixture: Any) -> str:
    fps = info["fingerprints"]
    if not info["chain"]:
        lines = [
            f"Lineage: not recorded (no `lineage.json` artifact on run {info['run_id']}).",
            "",
            f"Stage chain (from run tag): {' -> '.join(stages) or NOT_RECORDED}.",
        ]
        if isinstance(mixture, dict):
            lines += [f"- {s}: {_mixture_text(mixture.get(s))}" for s in stages]
        lines += ["", "Datasets (from version tags):", ""]
        lines += [f"- {d}" for d in _dataset_refs(fps)] or ["- none recorded"]
        return "\n".join(lines)
    lines = ["Stage chain: " + " -> ".join(c["name"] for c in info["chain"]), ""]
    for link in info["chain"]:
        digest = (link.get("weights_sha256") or "")[:12] or "?"
        if link.get("name") == "base":
            lines.append(f"- **base**: `{link.get('path') or '?'}` (weights {digest})")
            continue
        sources = ", ".join(f"{s}@{fp}" for s, fp in (link.get("sources") or {}).items())
        mix = link.get("realised_mixture")
        if not mix and isinstance(mixture, dict):
            mix = mixture.get(link["name"])
        lines.append(
            f"- **{link['name']}** (from {link.get('parent') or '?'}, weights {digest}): "
            f"{_mixture_text(mix)}; data {sources or NOT_RECORDED}"
        )
    return "\n".join(lines)


def _evaluation(metrics: dict[str, float], tags: dict[str, str], run_tags: dict[str, str]) -> str:
    per_task = task_metrics(metrics)
    names = sorted({m for values in per_task.values() for m in values})
    if per_task:
        lines = ["| Task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for task, values in per_task.items():
            cells = [f"{values[m]:.4f}" if m in values else "-" for m in names]
            lines.append(f"| {_cell(task)} | " + " | ".join(cells) + " |")
    else:
        lines = ["No per-task `eval/<task>/<metric>` metrics logged on the run."]
    if "eval/score" in metrics:
        lines += ["", f"Headline score (`eval/score`): {metrics['eval/score']:.4f}"]
    calib = [f"ECE {metrics[ECE]:.4f}" if ECE in metrics else "ECE not measured"]
    calib.append(f"Brier {metrics[BRIER]:.4f}" if BRIER in metrics else "Brier not measured")
    lines += ["", "Calibration: " + "; ".join(calib) + "."]
    leak: Any = metrics.get(CONTAMINATION)
    if leak is None:
        leak = tags.get(CONTAMINATION) or run_tags.get(CONTAMINATION)
    if leak is None:
        lines += ["", f"Leakage (`{CONTAMINATION}`): not measured."]
    else:
        shown = f"{leak:.4f}" if isinstance(leak, float) else str(leak)
        lines += ["", f"Leakage (`{CONTAMINATION}`): {shown}."]
    return "\n".join(lines)


def _approvals(mv: Any) -> str:
    got = approvals(mv)
    if not got:
        return "none"
    lines = ["| Who | Role | When | Comment |", "|---|---|---|---|"]
    for user, a in sorted(got.items()):
        row = (user, a.get("role", "?"), a.get("when", "?"), a.get("comment", ""))
        lines.append("| " + " | ".join(_cell(x) for x in row) + " |")
    return "\n".join(lines)


def _gate(registry: Registry, policy: Policy | None, info: dict[str, Any]) -> str:
    if policy is None:
        return "No policy given: gate not evaluated."
    verdict = evaluate_gate(registry, policy, info["model"], info["version"])
    lines = [
        f"Policy **{policy.name}**: {'PASS' if verdict.passed else 'FAIL'}",
        "",
        "| Check | Result | Detail |",
        "|---|---|---|",
    ]
    for c in verdict.checks:
        result = "pass" if c.passed else "fail"
        lines.append(f"| {_cell(c.check)} | {result} | {_cell(c.detail)} |")
    return "\n".join(lines)
