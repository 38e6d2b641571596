"""core/inpaint.py: the step hook that keeps the source outside the mask, on NumPy arrays and torch tensors."""

import numpy as np
import pytest
import torch

from sanaedit.core.inpaint import keep_source_outside
from sanaedit.core.sampling import SAMPLE_FUNCTIONS, flow_sigmas


@pytest.mark.parametrize("sampler", sorted(SAMPLE_FUNCTIONS))
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_the_kept_cells_follow_the_source_down_the_schedule_and_end_on_it(sampler, kind):
    rng = np.random.default_rng(0)
    source, noise = rng.standard_normal((2, 1, 3, 4, 4)).astype(np.float32)
    mask = np.zeros((1, 1, 4, 4), np.float32)
    mask[..., :2] = 1  # the left half is edited
    sigmas = flow_sigmas(4, schedule="scm" if sampler == "scm" else "default")
    if kind == "torch":
        source, noise, mask = map(torch.from_numpy, (source, noise, mask))
    seen = []

    def then(step, sigma, x):
        seen.append((step, x[..., 2:] * 1))
        return None

    hook = keep_source_outside(source, noise, mask, sigmas, then=then)
    start = (1 - sigmas[0]) * source + sigmas[0] * noise
    out = SAMPLE_FUNCTIONS[sampler](lambda x, s: x * 0.5 + 1, start, sigmas, step_end=hook, generator=None)
    assert [step for step, _ in seen] == [1, 2, 3, 4]
    for step, kept in seen:
        want = (1 - sigmas[step]) * source[..., 2:] + sigmas[step] * noise[..., 2:]
        np.testing.assert_allclose(np.asarray(kept), np.asarray(want), rtol=0, atol=1e-6)
    assert np.array_equal(np.asarray(out[..., 2:]), np.asarray(source[..., 2:]))  # clean at the last step
    assert not np.allclose(np.asarray(out[..., :2]), np.asarray(source[..., :2]))  # the edited half is the sampler's
