"""The validation loss early stopping compares: reported by the loop, equal to a direct computation."""

from __future__ import annotations

import pytest
import torch
from helpers import write_job
from sweep_helpers import hybrid_job

from hybridft.specs import load_job
from hybridft.train.prepare import validation_rows
from hybridft.train.run import run

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_loop_reports_the_validation_loss_of_its_weights(
    ray_session, small_demo_data, tmp_path
) -> None:
    import ray

    from hybridft.model.hf import load_model, load_tokenizer
    from hybridft.train.loss import LossModel
    from hybridft.train.packing import shift_loss_mask

    spec = hybrid_job(tmp_path, small_demo_data)
    spec["scaling"] = {"num_workers": 2, "resources_per_worker": {"CPU": 0.5}}
    spec["training"].update({"precision": "fp32", "validate_every": 3, "log_every": 2})
    job = load_job(write_job(tmp_path, spec))
    result = run(job)

    validated = [(h["stage"], h["step"]) for h in result.history if "val_loss" in h]
    # every validate_every steps and at each stage end (4 steps per stage)
    assert validated == [("instruction", 3), ("instruction", 4), ("sft", 3), ("sft", 4)]
    assert all("val_loss/it_desk" in h for h in result.history if "val_loss" in h)

    # the last value, recomputed here in one process from the final weights: the loop's sharding
    # over two workers, its padding rows and its all-reduce lose nothing
    rows = ray.get(validation_rows(job, load_tokenizer(result.model_dir)).rows)
    assert len(rows) % 2 == 0
    model = LossModel(load_model(result.model_dir)).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(rows)):
            target = torch.from_numpy(
                shift_loss_mask(rows.loss_mask[i : i + 1], rows.position_ids[i : i + 1])
            )
            losses = model(
                torch.from_numpy(rows.input_ids[i : i + 1].astype("int64")),
                torch.from_numpy(rows.position_ids[i : i + 1].astype("int64")),
                target,
            )
            total += float(losses.sum())
            count += losses.numel()
    assert count > 0
    assert result.history[-1]["val_loss"] == pytest.approx(total / count, rel=1e-4)
