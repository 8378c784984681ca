"""Shared fixtures and settings for detlib's tests."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def random_boxes(
    n: int,
    generator: torch.Generator,
    *,
    image: float = 500.0,
    max_size: float = 100.0,
    min_size: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` random valid (x1, y1, x2, y2) boxes, drawn on the CPU generator."""
    top_left = torch.rand(n, 2, generator=generator, dtype=torch.float64) * image
    size = min_size + torch.rand(n, 2, generator=generator, dtype=torch.float64) * (
        max_size - min_size
    )
    return torch.cat((top_left, top_left + size), dim=1).to(dtype)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
