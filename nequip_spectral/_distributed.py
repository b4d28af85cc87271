"""The few things this package asks of a distributed (DDP) run; without one, a single rank."""

import torch


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks (``(0, 1)`` without DDP)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def every_rank(value) -> list:
    """``value`` of every rank, in rank order (``[value]`` without DDP)."""
    _, world = rank_and_world()
    if world == 1:
        return [value]
    values = [None] * world
    torch.distributed.all_gather_object(values, value)
    return values
