"""The model card: HF front matter from run metrics and version tags, governance sections."""

from __future__ import annotations

import mlflow.artifacts

from hybridft.registry.access import User
from hybridft.registry.approvals import approve
from hybridft.registry.model_card import (
    CARD_ARTIFACT,
    CARD_TAG,
    SECTIONS,
    build_card,
    log_card,
    parse_front_matter,
    write_card,
)
from hybridft.registry.policy import MetricThreshold, Policy

FP = "sha256:" + "ab" * 32
METRICS = {
    "eval/score": 0.9,
    "eval/support/accuracy": 0.88,
    "eval/support/exact_match": 0.8,
    "eval/ece": 0.04,
}


def _version(make_version, **kw) -> str:
    return make_version("clf", METRICS, fingerprints={"support": FP}, **kw)


def test_card_front_matter_and_sections(registry, make_version):
    v = _version(make_version, tags={"hybridft.parent": "/models/tiny-base"})
    card = build_card(registry, f"clf@{v}", risk_rating="high")
    front = parse_front_matter(card)
    assert front["library_name"] == "transformers"
    assert front["base_model"] == "/models/tiny-base"
    assert front["datasets"] == [f"support@{FP}"]
    assert "hybridft" in front["tags"]
    (entry,) = front["model-index"]
    assert entry["name"] == "clf"
    (result,) = entry["results"]
    assert result["task"] == {"type": "text-classification", "name": "support"}
    assert result["dataset"]["name"] == "support"
    by_type = {m["type"]: m["value"] for m in result["metrics"]}
    assert by_type["accuracy"] == 0.88 and by_type["exact_match"] == 0.8
    for title in SECTIONS:
        assert f"\n## {title}\n" in card
    assert "**high**" in card
    assert "ECE 0.0400" in card
    assert "Leakage (`eval/contamination`): not measured." in card
    assert "## Approvals\n\nnone" in card


def test_card_shows_approvals(registry, make_version, tmp_path):
    v = _version(make_version)
    approve(
        registry,
        "clf",
        v,
        user=User("ann", ("approver",)),
        comment="looks good",
        audit_path=tmp_path / "audit.jsonl",
    )
    approvals = build_card(registry, f"clf@{v}").split("## Approvals", 1)[1].split("## ", 1)[0]
    assert "| ann | approver |" in approvals
    assert "looks good" in approvals


def test_missing_lineage_is_reported(registry, make_version):
    v = _version(make_version)
    card = build_card(registry, f"clf@{v}")
    assert "Lineage: not recorded (no `lineage.json` artifact" in card
    assert "Package versions: not recorded" in card
    assert "Git commit | not recorded" in card
    assert "base_model" not in parse_front_matter(card)


def test_lineage_chain_and_mixture(registry, make_version):
    v = _version(make_version)
    run_id = registry.resolve(f"clf@{v}").run_id
    chain = [
        {"name": "base", "parent": None, "path": "/models/base", "weights_sha256": "c" * 64},
        {
            "name": "sft",
            "parent": "base",
            "path": "/runs/sft",
            "weights_sha256": "d" * 64,
            "sources": {"support": FP},
            "realised_mixture": {"support": 0.75, "chat": 0.25},
        },
    ]
    registry.log_dict(run_id, chain, "lineage.json")
    registry.log_dict(run_id, {"python": "3.11.9", "torch": "2.4.0"}, "packages.json")
    card = build_card(registry, f"clf@{v}")
    front = parse_front_matter(card)
    assert front["base_model"] == "/models/base"
    assert front["tags"] == ["hybridft", "sft"]
    assert "Stage chain: base -> sft" in card
    assert "realised mixture: chat 0.250, support 0.750" in card
    assert "- torch: 2.4.0" in card


def test_gate_verdict_section(registry, make_version):
    v = _version(make_version)
    policy = Policy(
        name="p",
        metrics=[MetricThreshold(metric="eval/score", min=0.5)],
        max_ece=0.01,
        require_approved_data=False,
    )
    card = build_card(registry, f"clf@{v}", policy=policy)
    gate = card.split("## Gate verdict", 1)[1]
    assert "Policy **p**: FAIL" in gate
    assert "| eval/score >= 0.5 | pass |" in gate
    assert "| eval/ece <= 0.01 | fail |" in gate
    assert "| approvals by approver | fail |" in gate


def test_write_and_log_card(registry, make_version, tmp_path):
    v = _version(make_version)
    out = write_card(registry, f"clf@{v}", tmp_path / "card" / "README.md")
    assert parse_front_matter(out.read_text())["datasets"] == [f"support@{FP}"]
    uri = log_card(registry, f"clf@{v}")
    assert uri.endswith(f"/{CARD_ARTIFACT}")
    assert registry.resolve(f"clf@{v}").tags[CARD_TAG] == uri
    got = mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=str(tmp_path / "dl"), tracking_uri=registry.tracking_uri
    )
    assert "## Model details" in open(got, encoding="utf-8").read()


def test_parse_front_matter_without_yaml():
    assert parse_front_matter("# just markdown\n") == {}
