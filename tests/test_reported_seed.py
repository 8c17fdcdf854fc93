"""A seed a provider reports is kept only when it is one: an integer a 64-bit generator takes."""
from __future__ import annotations

import pytest

from comfyui_flux2.flux2.errors import ProviderError
from comfyui_flux2.flux2.remote.jobs import Job, checked_seed
from comfyui_flux2.flux2.rules import MAX_TORCH_SEED


@pytest.mark.parametrize("seed", [0, 73410, 2**32 - 1, MAX_TORCH_SEED])
def test_a_64_bit_seed_is_kept(seed):
    job = Job(index=0, seed=1, body=None)
    checked_seed(job, seed, "runware")
    assert job.result_seed == seed


@pytest.mark.parametrize("seed", [-1, 2**64, True, 1.0, "7"])
def test_anything_else_fails_the_job_in_one_line(seed):
    job = Job(index=0, seed=1, body=None)
    with pytest.raises(ProviderError, match="not an integer") as failed:
        checked_seed(job, seed, "runware")
    assert "\n" not in str(failed.value) and job.result_seed is None
