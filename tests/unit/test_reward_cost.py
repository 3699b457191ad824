"""The reward-cost command runs and reports every new reward, per 1,000 completions (tiny models, 20 rows)."""

from __future__ import annotations

import json

from launch.tools.reward_cost import main


def test_reward_cost_reports_each_reward(capsys):
    main(["--rows", "20", "--size", "tiny"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["reward"] for r in lines] == [
        *[k for k in ("rouge1", "rouge2", "rougeL") for _ in range(2)],
        "bertscore",
        "reward_model (reference_candidate)",
    ]
    assert all(r["rows"] == 20 and r["ms_per_1000"] > 0 for r in lines)
