"""Which torch device an actor computes on.

Ray gives an actor a GPU by setting CUDA_VISIBLE_DEVICES for it, so inside the actor `torch.cuda.is_available()`
says whether it was given one (`num_gpus` > 0). Shared by the learner and the reward-model actor.
"""

from __future__ import annotations

from typing import Literal

import torch

from shared.errors import UserError

DeviceChoice = Literal["auto", "cpu", "cuda"]


def pick_device(requested: DeviceChoice, cuda_available: bool | None = None) -> torch.device:
    """auto: CUDA when this process sees a GPU, else the CPU; cpu/cuda as asked (cuda without a GPU is an error)."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if requested == "auto":
        return torch.device("cuda" if cuda_available else "cpu")
    if requested == "cuda" and not cuda_available:
        raise UserError(
            "train.device=cuda but this actor sees no CUDA GPU: give it one (train.num_gpus=1, or "
            "rewards.reward_model.num_gpus for the reward model) on a machine with a GPU and CUDA torch, or set "
            "train.device=auto"
        )
    return torch.device(requested)
