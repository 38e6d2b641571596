import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from sanaedit.core.sampling import euler_sample, flow_sigmas


def reference_published(n: int) -> np.ndarray:
    """The MNN-Sana-Edit-V2 engine's schedule, written out as its reference describes it."""
    s = np.array([i * 0.999 / (n - 1) for i in range(n)]) if n > 1 else np.array([0.999])
    s = 3 * s / (1 + 2 * s)
    return s[::-1] * 1000  # timesteps t_i


@pytest.mark.parametrize("n", [1, 5, 10, 20])
def test_published_schedule_matches_reference_formula(n):
    sigmas = flow_sigmas(n, schedule="published")
    assert len(sigmas) == n + 1 and sigmas[-1] == 0
    np.testing.assert_allclose(sigmas[:-1] * 1000, reference_published(n), rtol=0, atol=1e-9)
    if n > 1:
        assert sigmas[-2] == 0  # the engine's last call sits at t = 0: a zero step


@pytest.mark.parametrize("n", [1, 5, 10, 20])
def test_default_schedule_is_diffusers_flow_match_euler(n):
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 1000, n))
    ours = flow_sigmas(n)
    np.testing.assert_allclose(ours, sched.sigmas.numpy(), atol=1e-6)
    np.testing.assert_allclose(ours[:-1] * 1000, sched.timesteps.numpy(), atol=1e-3)
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


def _curved_velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A deterministic, non-linear stand-in for a DiT (so second-order terms matter)."""
    return torch.tanh(x) * (1.5 - float(sigma)) + 0.3 * torch.sin(3 * x) + float(sigma) ** 2


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20])
def test_dpm_solver_matches_diffusers_flow_dpm_solver(n):
    from diffusers import DPMSolverMultistepScheduler

    from sanaedit.core.sampling import dpm_solver_sample

    sched = DPMSolverMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0, solver_order=2
    )
    sched.set_timesteps(n)
    sigmas = flow_sigmas(n, schedule="linear")
    np.testing.assert_allclose(sigmas, sched.sigmas.numpy(), atol=1e-6)
    # diffusers hands the DiT integer timesteps; ours (and the published engine's) are 1000 sigma unrounded
    np.testing.assert_allclose(sigmas[:-1] * 1000, sched.timesteps.numpy(), atol=1)

    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(n))
    want = x.clone()
    for i, t in enumerate(sched.timesteps):
        want = sched.step(_curved_velocity(want, sched.sigmas[i]), t, want).prev_sample
    ours = dpm_solver_sample(_curved_velocity, x.clone(), sigmas)
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)


def test_dpm_solver_on_a_straight_flow_lands_on_x0_and_skips_zero_steps():
    from sanaedit.core.sampling import dpm_solver_sample

    x0, noise = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    calls = []

    def velocity(x, sigma):
        calls.append(float(sigma))
        return noise - x0

    for schedule, expected_calls in [("default", 10), ("published", 9)]:
        calls.clear()
        start = float(flow_sigmas(10, schedule=schedule)[0])
        out = dpm_solver_sample(velocity, (1 - start) * x0 + start * noise, flow_sigmas(10, schedule=schedule))
        torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
        assert len(calls) == expected_calls


def test_pipeline_sampler_option(tiny_pipe):
    from PIL import Image

    image = Image.new("RGB", (16, 16), "red")
    kwargs = dict(num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    euler = np.asarray(tiny_pipe(image, **kwargs).images[0])
    kwargs["generator"] = torch.Generator().manual_seed(0)
    dpm = np.asarray(tiny_pipe(image, sampler="dpm", **kwargs).images[0])
    assert euler.shape == dpm.shape and not np.array_equal(euler, dpm)  # dpm ran on its own "linear" schedule
    kwargs["generator"] = torch.Generator().manual_seed(0)
    same = np.asarray(tiny_pipe(image, sampler="dpm", schedule="default", **kwargs).images[0])
    assert np.abs(same.astype(int) - euler.astype(int)).max() <= 1  # from sigma 1 it reduces to Euler
    with pytest.raises(ValueError, match="unknown sampler"):
        tiny_pipe(image, sampler="ddim")


@pytest.mark.parametrize("n", [1, 2, 4])
def test_scm_sampler_matches_diffusers_scm_scheduler_with_sprints_conversion(n):
    """diffusers' SCMScheduler driven the way pipeline_sana_sprint.py drives it (TrigFlow conversion of the model,
    latents scaled by sigma_data) gives what our flow-space sCM sampler gives, noise draw for noise draw."""
    from diffusers import SCMScheduler

    from sanaedit.core.sampling import scm_sample

    sched = SCMScheduler()
    sched.set_timesteps(n, intermediate_timesteps=1.3 if n == 2 else None)
    sigma_data = sched.config.sigma_data
    start = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(5))

    gen = torch.Generator().manual_seed(7)
    latents = start * sigma_data
    for t in sched.timesteps[:-1]:
        s = torch.sin(t) / (torch.cos(t) + torch.sin(t))
        x_in = latents / sigma_data * torch.sqrt(s**2 + (1 - s) ** 2)
        v = _curved_velocity(x_in, s)
        trig = ((1 - 2 * s) * x_in + (1 - 2 * s + 2 * s**2) * v) / torch.sqrt(s**2 + (1 - s) ** 2)
        latents, denoised = sched.step(trig * sigma_data, t, latents, generator=gen, return_dict=False)
    want = denoised / sigma_data

    sigmas = flow_sigmas(n, schedule="scm")
    ours = scm_sample(_curved_velocity, start * float(np.sqrt(sigmas[0] ** 2 + (1 - sigmas[0]) ** 2)), sigmas,
                      generator=torch.Generator().manual_seed(7))  # fmt: skip
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampler", ["euler", "dpm", "scm"])
def test_samplers_give_the_same_latents_on_numpy_arrays_as_on_torch_tensors(sampler):
    """Exported graphs sample on NumPy arrays with the same code: same numbers (the sCM's fresh noise included, drawn
    by `noise.Generator` as torch.randn draws it for that seed)."""
    from sanaedit.core.noise import Generator
    from sanaedit.core.sampling import get_sampler

    def curved_numpy(x, sigma):
        return np.tanh(x) * (1.5 - float(sigma)) + 0.3 * np.sin(3 * x) + float(sigma) ** 2

    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    sigmas = flow_sigmas(4, schedule="scm" if sampler == "scm" else "default")
    sample = get_sampler(sampler)
    ours = sample(_curved_velocity, x.clone(), sigmas, generator=torch.Generator().manual_seed(3))
    on_numpy = sample(curved_numpy, x.numpy().copy(), sigmas, generator=Generator(3))
    assert isinstance(on_numpy, np.ndarray) and on_numpy.dtype == np.float32
    np.testing.assert_allclose(on_numpy, ours.numpy(), atol=1e-5, rtol=0)


def test_trigflow_conversion_of_a_flow_model_is_exact():
    """With the exact velocity of a straight flow, one sCM step from pure noise lands on x0."""
    from sanaedit.core.sampling import scm_sample

    x0, z = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    sigmas = flow_sigmas(1, schedule="scm")
    out = scm_sample(lambda x, s: z - x0, (1 - sigmas[0]) * x0 + sigmas[0] * z, sigmas)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_pipeline_runs_the_scm_sampler_with_its_schedule(tiny_pipe):
    from PIL import Image

    calls = []
    forward = tiny_pipe.transformer.forward

    def spy(sample, hidden, timestep, *args, **kwargs):
        calls.append(float(timestep[0]))
        return forward(sample, hidden, timestep, *args, **kwargs)

    tiny_pipe.transformer.forward = spy
    try:
        out = tiny_pipe(Image.new("RGB", (16, 16)), sampler="scm", num_inference_steps=2, guidance_scale=1.0)
    finally:
        del tiny_pipe.transformer.forward
    assert out.images[0].size == (16, 16)
    s_mid = np.sin(1.3) / (np.sin(1.3) + np.cos(1.3))
    assert calls == pytest.approx([1000.0, 1000 * s_mid], abs=0.01)  # two calls at Sprint's times


def test_cli_edit_sampler_dpm_writes_a_png_unlike_euler(tiny_model_dir, tmp_path):
    from PIL import Image

    from sanaedit.apps.cli import main

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    args = ["edit", str(tmp_path / "p.png"), "--model", str(tiny_model_dir), "--steps", "3", "--seed", "3", "-q"]
    for sampler in ("dpm", "euler"):
        assert main([*args, "-o", str(tmp_path / f"{sampler}.png"), "--sampler", sampler]) == 0
    dpm, euler = (Image.open(tmp_path / f"{s}.png") for s in ("dpm", "euler"))
    assert dpm.format == euler.format == "PNG" and dpm.size == euler.size == (32, 24)
    assert not np.array_equal(np.asarray(dpm), np.asarray(euler))
