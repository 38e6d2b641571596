import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from sanaedit.sampling import euler_sample, flow_sigmas


def reference_published(n: int) -> np.ndarray:
    """The MNN-Sana-Edit-V2 engine's schedule, written out as its reference describes it."""
    s = np.array([i * 0.999 / (n - 1) for i in range(n)]) if n > 1 else np.array([0.999])
    s = 3 * s / (1 + 2 * s)
    return s[::-1] * 1000  # timesteps t_i


@pytest.mark.parametrize("n", [1, 5, 10, 20])
def test_published_schedule_matches_reference_formula(n):
    sigmas = flow_sigmas(n, schedule="published")
    assert len(sigmas) == n + 1 and sigmas[-1] == 0
    np.testing.assert_allclose((sigmas[:-1] * 1000).numpy(), reference_published(n), rtol=0, atol=1e-9)
    if n > 1:
        assert sigmas[-2] == 0  # the engine's last call sits at t = 0: a zero step


@pytest.mark.parametrize("n", [1, 5, 10, 20])
def test_default_schedule_is_diffusers_flow_match_euler(n):
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 1000, n))
    ours = flow_sigmas(n)
    np.testing.assert_allclose(ours.numpy(), sched.sigmas.numpy(), atol=1e-6)
    np.testing.assert_allclose((ours[:-1] * 1000).numpy(), sched.timesteps.numpy(), atol=1e-3)
    assert ours[0] == 1 and ours[-1] == 0
    if n > 1:
        assert abs(ours[-2] - 0.003) < 1e-4


@pytest.mark.parametrize("schedule", ["default", "published"])
def test_euler_is_exact_on_straight_flow_and_skips_zero_steps(schedule):
    torch.manual_seed(0)
    x0, noise = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    calls = []

    def velocity(x, sigma):
        calls.append(float(sigma))
        return noise - x0  # the straight path's constant velocity

    sigmas = flow_sigmas(10, schedule=schedule)
    out = euler_sample(velocity, noise.clone(), sigmas)
    # Starting from unscaled noise at sigma_0 (0.99967 in the published schedule), Euler lands on
    # noise - sigma_0 * (noise - x0): exactly x0 when sigma_0 = 1.
    torch.testing.assert_close(out, noise - float(sigmas[0]) * (noise - x0), atol=1e-5, rtol=0)
    assert len(calls) == (10 if schedule == "default" else 9)  # published: last call is a no-op, skipped
    assert calls[0] == pytest.approx(1.0 if schedule == "default" else 2.997 / 2.998, abs=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_steps"):
        flow_sigmas(0)
    with pytest.raises(ValueError, match="unknown schedule"):
        flow_sigmas(4, schedule="karras")
