"""The CLI as a user meets it: one error line naming file:line and key, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def hybridft(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hybridft.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def bad_jsonl(tmp_path: Path) -> Path:
    rows = [json.dumps({"instruction": f"Say {i}", "output": str(i)}) for i in range(1, 11)]
    rows[6] = '{"instruction": "Say 7" "output": "7"}'  # line 7: broken JSON
    rows[8] = json.dumps({"instruction": "Say 9"})  # line 9: no output
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_broken_json_line_7_is_one_error_line(bad_jsonl: Path) -> None:
    line = one_error_line(hybridft("data", "validate", str(bad_jsonl)))
    assert line.startswith(f"error: {bad_jsonl}:7: invalid JSON")


def test_missing_output_line_9_is_one_error_line(bad_jsonl: Path, tmp_path: Path) -> None:
    lines = bad_jsonl.read_text().splitlines()
    lines[6] = json.dumps({"instruction": "Say 7", "output": "7"})
    fixed = tmp_path / "only9.jsonl"
    fixed.write_text("\n".join(lines) + "\n")
    line = one_error_line(hybridft("data", "validate", str(fixed)))
    assert line == f"error: {fixed}:9: output: required key is missing"


def test_skip_policy_counts_and_writes_rejects(bad_jsonl: Path, tmp_path: Path) -> None:
    rejects = tmp_path / "rejects.jsonl"
    proc = hybridft(
        "data", "validate", str(bad_jsonl), "--on-bad-rows", "skip", "--rejects", str(rejects)
    )
    assert proc.returncode == 0, proc.stderr
    rejected = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [r["line"] for r in rejected] == [7, 9]
    assert "8" in proc.stdout and "2" in proc.stdout  # accepted and rejected counts shown


def test_missing_data_file(tmp_path: Path) -> None:
    line = one_error_line(hybridft("data", "validate", str(tmp_path / "nope.jsonl")))
    assert line.startswith(f"error: {tmp_path / 'nope.jsonl'}")
    assert "no such file" in line


def test_missing_spec_file(tmp_path: Path) -> None:
    line = one_error_line(hybridft("train", str(tmp_path / "nope.yaml")))
    assert line == f"error: {tmp_path / 'nope.yaml'}: file not found"


def test_bad_model_reference_is_a_clear_message(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    line = one_error_line(hybridft("serve", "nosuch@nonexistent", "--tracking-uri", uri))
    assert line == f"error: nosuch@nonexistent: no such model version or alias in {uri}"


def test_data_stats_on_demo_rows(small_demo_data: Path, tiny_model_dir: Path) -> None:
    proc = hybridft(
        "data",
        "stats",
        str(small_demo_data / "sft/support/train.jsonl"),
        "--tokenizer",
        str(tiny_model_dir),
    )
    assert proc.returncode == 0, proc.stderr
    assert "300" in proc.stdout  # rows
    assert "refund" in proc.stdout  # label balance


def test_data_stats_counts_truncation_against_the_jobs_max_len(
    small_demo_data: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """``--max-len`` / ``--job``: truncation is counted against what the job would keep."""
    from helpers import job_dict, write_job

    def truncated(*extra: str) -> str:
        path = str(small_demo_data / "sft/support/train.jsonl")
        proc = hybridft("data", "stats", path, "--tokenizer", str(tiny_model_dir), *extra)
        assert proc.returncode == 0, proc.stderr
        return next(line for line in proc.stdout.splitlines() if "longer than" in line)

    spec = job_dict(tmp_path, small_demo_data)
    spec["data"]["max_len"] = 16
    job = write_job(tmp_path, spec)
    line = truncated("--job", str(job))
    assert "longer than 16 " in line and line == truncated("--max-len", "16")
    assert int(line.split()[3].replace(",", "")) > 0  # rows over the job's 16 tokens


def test_serve_without_keys_only_on_a_loopback_host(tmp_path: Path) -> None:
    proc = hybridft(
        "serve", "m@1", "--host", "0.0.0.0", "--insecure-local", "--serve-dir", str(tmp_path)
    )
    assert one_error_line(proc) == (
        "error: --insecure-local: serving without API keys is allowed on a loopback host only "
        "(127.0.0.1, ::1, localhost), got --host 0.0.0.0"
    )


def test_serve_with_an_empty_key_store_says_how_to_make_a_key(
    tmp_path: Path, registry, make_version
) -> None:
    version = make_version("desk", {"accuracy": 0.9})
    uri = registry.tracking_uri
    proc = hybridft("serve", f"desk@{version}", "--tracking-uri", uri, "--serve-dir", str(tmp_path))
    line = one_error_line(proc)
    keys = tmp_path.resolve() / "keys.db"
    assert line.startswith(f"error: serve: no API keys in {keys}: create one with `hybridft keys")
    assert f"--serve-dir {tmp_path.resolve()}`" in line and "--insecure-local" in line
