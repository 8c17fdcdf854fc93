"""IMAGE tensor -> uint8 pictures: the values of torch's clamp / x255 / round-half-to-even / cast, computed in numpy."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from comfyui_flux2.flux2.images import tensor_to_arrays


def _torch_way(image: torch.Tensor) -> np.ndarray:
    rgb = image[..., :3] if image.shape[-1] != 1 else image.expand(-1, -1, -1, 3)
    return (rgb.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


def test_pictures_match_torch_to_the_level_on_edge_values():
    g = torch.Generator().manual_seed(0)
    halves = ((torch.arange(255).float() + 0.5) / 255).reshape(1, 15, 17, 1)        # ties of the rounding
    cases = [torch.rand(2, 64, 48, 3, generator=g) * 1.4 - 0.2, torch.rand(1, 32, 32, 4, generator=g), halves,
             halves.expand(1, 15, 17, 3), torch.rand(1, 20, 20, 3, generator=g).to(torch.bfloat16),
             torch.rand(1, 20, 20, 3, generator=g, dtype=torch.float64), torch.rand(1, 8, 8, 3, requires_grad=True)]
    for image in cases:
        got = tensor_to_arrays(image)
        want = _torch_way(image)
        assert len(got) == image.shape[0]
        for i, picture in enumerate(got):
            assert picture.dtype == np.uint8 and picture.shape == image.shape[1:3] + (3,)
            np.testing.assert_array_equal(picture, want[i])


def test_nan_and_infinities_are_black_and_white_without_a_warning():
    image = torch.tensor([[[[float("nan"), float("inf"), -float("inf")]]]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (picture,) = tensor_to_arrays(image)
    assert picture.tolist() == [[[0, 255, 0]]]
