"""The pass@k table of `prolora eval`, checked against numbers worked out by hand, and how it finds adapters."""

from __future__ import annotations

import pytest

from launch.tools.passk import find_adapters, format_table, parse_ks, pass_at_k_table
from shared.errors import UserError
from shared.records import AdapterPayload


def test_table_matches_hand_computed_pass_at_k():
    # n = 4 samples per prompt. pass@k for one prompt with c correct is 1 - C(4-c, k) / C(4, k):
    #   c=0: 0 for every k;  c=1: k=1 -> 1/4, k=2 -> 1 - C(3,2)/C(4,2) = 1 - 3/6 = 1/2, k=4 -> 1;
    #   c=2: k=1 -> 1/2, k=2 -> 1 - C(2,2)/C(4,2) = 5/6, k=4 -> 1;  c=4: 1 for every k.
    counts = {"base": [0, 1, 2], "final": [4, 2, 0, 1]}
    table = pass_at_k_table(counts, n=4, ks=(1, 2, 4))
    assert table["base"][1] == pytest.approx((0 + 1 / 4 + 1 / 2) / 3)
    assert table["base"][2] == pytest.approx((0 + 1 / 2 + 5 / 6) / 3)
    assert table["base"][4] == pytest.approx((0 + 1 + 1) / 3)
    assert table["final"][1] == pytest.approx((1 + 1 / 2 + 0 + 1 / 4) / 4)
    assert table["final"][2] == pytest.approx((1 + 5 / 6 + 0 + 1 / 2) / 4)
    assert table["final"][4] == pytest.approx(3 / 4)


def test_pass_at_1_is_the_mean_accuracy_of_the_samples():
    counts = {"m": [3, 7, 0, 16, 9]}
    assert pass_at_k_table(counts, n=16, ks=(1,))["m"][1] == pytest.approx(sum(counts["m"]) / (16 * 5))


def test_parse_ks():
    assert parse_ks("64,1, 8") == (1, 8, 64)
    for bad in ("", "0,4", "a,b"):
        with pytest.raises(UserError):
            parse_ks(bad)


def _adapter(path, marker: bytes = b"w"):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    (path / "adapter_model.safetensors").write_bytes(marker)
    return path


def test_find_adapters_in_a_run_directory(tmp_path):
    (tmp_path / "config.yaml").write_text("{}")
    for name in ("final", "step_000020", "step_000040", "latest"):
        _adapter(tmp_path / "adapters" / name)
    config, found, out = find_adapters(tmp_path, "final")
    assert config == tmp_path / "config.yaml" and out == tmp_path
    assert [label for label, _ in found] == ["final"]
    _, found, _ = find_adapters(tmp_path, "all")
    assert [label for label, _ in found] == ["step_000020", "step_000040", "final"]
    with pytest.raises(UserError, match="no adapter step_9"):
        find_adapters(tmp_path, "step_9")


def test_a_run_without_final_uses_latest(tmp_path):
    (tmp_path / "config.yaml").write_text("{}")
    _adapter(tmp_path / "adapters" / "latest")
    assert [label for label, _ in find_adapters(tmp_path, "final")[1]] == ["latest"]


def test_an_adapter_directory_uses_its_run_config(tmp_path):
    (tmp_path / "config.yaml").write_text("{}")
    adapter = _adapter(tmp_path / "adapters" / "step_000020")
    config, found, out = find_adapters(adapter, "final")
    assert config == tmp_path / "config.yaml"
    assert found == [("step_000020", adapter)] and out == adapter.parent
    with pytest.raises(UserError, match="neither a run directory"):
        find_adapters(tmp_path / "adapters", "final")


def test_adapter_payload_reads_the_two_peft_files(tmp_path):
    payload = AdapterPayload.read(_adapter(tmp_path / "a", b"weights"), version=3)
    assert payload.version == 3
    assert dict(payload.files) == {"adapter_config.json": b"{}", "adapter_model.safetensors": b"weights"}
    (tmp_path / "a" / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match="missing adapter_model.safetensors"):
        AdapterPayload.read(tmp_path / "a", 1)


def test_format_table():
    document = {
        "split": "heldout",
        "n": 4,
        "n_prompts": 3,
        "k": [1, 4],
        "temperature": 1.0,
        "rows": [
            {"model": "base", "pass_at_k": {"1": 0.25, "4": 0.5}},
            {"model": "final", "pass_at_k": {"1": 0.5, "4": 0.75}},
        ],
    }
    lines = format_table(document).splitlines()
    assert lines[1].split() == ["model", "pass@1", "pass@4"]
    assert lines[2].split() == ["base", "0.250", "0.500"]
    assert lines[3].split() == ["final", "0.500", "0.750"]
