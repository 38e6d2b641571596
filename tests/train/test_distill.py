"""Step distillation (`sanaedit distill`, train/distill.py): a few-step, CFG-free student of a teacher."""

import json
import shutil

import pytest
import torch

from sanaedit.apps.cli import main
from sanaedit.core.sampling import flow_sigmas, get_sampler, trig_to_flow
from sanaedit.image.io import load_image, preprocess
from sanaedit.pipeline import SanaEditPipeline
from sanaedit.train.distill import student_levels


def _distill(teacher_dir, data, out, objective="ode", steps=40, extra=()):
    args = ["distill", str(teacher_dir), "-o", str(out), "--data", str(data), "--objective", objective]
    args += ["--train-steps", str(steps), "--train.lr=1e-3", "--train.batch_size=4", "--log.progress=false"]
    assert main([*args, "--log.every=1", "--train.ema=0", *extra]) == 0
    run = out.parent / f".{out.name}.distill-run"
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def _edits(pipe, photo, sampler, schedule, steps, guidance, n=4):
    """Latent edits of `photo` from `n` fixed noises, at the pipeline's own conditioning."""
    ref = pipe.flow.encode(preprocess(load_image(photo), pipe.config.resolution)[0]).detach()
    noise = torch.randn(n, *ref.shape[1:], generator=torch.Generator().manual_seed(1))
    encoder = pipe.text_encoder
    cond = encoder.condition(encoder.llm_features([pipe.config.prompt]))
    if guidance > 1 and not pipe.flow.guidance_embeds:
        uncond = encoder.condition(encoder.llm_features([pipe.config.negative_prompt]))
        cond = tuple(torch.cat(pair) for pair in zip(uncond, cond))
    velocity = pipe.flow.sampling_velocity(*cond, ref, guidance)
    sigmas = flow_sigmas(steps, pipe.config.shift, schedule)
    with torch.no_grad():
        return get_sampler(sampler)(velocity, noise, sigmas, generator=torch.Generator().manual_seed(2))


def test_student_levels_are_the_scm_samplers_calls():
    levels = student_levels(2)
    assert levels[0] == pytest.approx(1.0, abs=1e-5)
    assert levels[1] == pytest.approx(float(trig_to_flow(torch.tensor(1.3))))
    assert len(student_levels(4)) == 1 + 1 + 2 + 3  # 1: [pi/2]; 2: + 1.3; 3: + 2 more; 4: + 3 more
    assert torch.all(student_levels(4)[:-1] > student_levels(4)[1:])


@pytest.mark.slow
def test_distilled_student_beats_the_teacher_at_one_step(tiny_model_dir, tiny_edit_pairs, tmp_path):
    teacher = SanaEditPipeline.from_pretrained(tiny_model_dir)
    g = teacher.config.guidance_scale
    assert g > 1  # a CFG teacher: the student embeds the scale instead
    losses = _distill(tiny_model_dir, tiny_edit_pairs, tmp_path / "student", steps=80)
    assert sum(losses[-10:]) < sum(losses[:10])  # the distillation loss falls
    student = SanaEditPipeline.from_pretrained(tmp_path / "student")
    assert student.config.sampler == "scm" and student.config.num_inference_steps == 2
    assert student.transformer.config.guidance_embeds
    photo = tiny_edit_pairs / "s0.png"  # a photo it was distilled on (the bundled model's numbers are held-out)
    reference = _edits(teacher, photo, "euler", "default", 10, g)  # what the teacher makes with its own 10 steps
    # one step: a deterministic noise -> edit map, comparable noise for noise with the teacher's (a second scm step
    # re-noises with fresh noise, so it can only match the teacher in distribution)
    teacher_fast = _edits(teacher, photo, "scm", "scm", 1, g)
    student_fast = _edits(student, photo, "scm", "scm", 1, g)
    error = lambda x: float(torch.mean((x - reference) ** 2))  # noqa: E731
    assert error(student_fast) < 0.8 * error(teacher_fast)  # measured 0.66


@pytest.mark.slow
def test_scm_objective_trains_a_student_of_a_cfg_free_teacher(tiny_model_dir, tiny_edit_pairs, tmp_path):
    losses = _distill(tiny_model_dir, tiny_edit_pairs, tmp_path / "s", "scm", 6, ["--train.distill.guidance=1"])
    assert len(losses) == 6 and all(loss == loss and loss < 1e6 for loss in losses)  # finite
    student = SanaEditPipeline.from_pretrained(tmp_path / "s")
    teacher = SanaEditPipeline.from_pretrained(tiny_model_dir)
    assert not student.transformer.config.get("guidance_embeds")  # no CFG to fold in: a plain copy, trained
    assert student.config.guidance_scale == 1.0 and student.config.sampler == "scm"
    moved = [not torch.equal(a, b) for a, b in zip(student.transformer.parameters(), teacher.transformer.parameters())]
    assert any(moved)


def test_distill_refuses_bad_requests(tiny_model_dir, tiny_edit_pairs, tmp_path, capsys):
    out = tmp_path / "student"
    base = ["distill", str(tiny_model_dir), "--data", str(tiny_edit_pairs)]
    with pytest.raises(SystemExit):
        main(base)  # no -o
    assert "-o/--output" in capsys.readouterr().err
    assert main([*base, "-o", str(out), "--train.trainable=[transformer,connector]"]) == 1
    assert "trains the student DiT only" in capsys.readouterr().err
    assert main([*base, "-o", str(out), "--steps", "4", "--train.distill.max_steps=2"]) == 1
    assert "max_steps" in capsys.readouterr().err
    assert main(["distill", str(tiny_model_dir), "-o", str(out), "--data", str(tmp_path)]) == 1
    assert "no manifest.jsonl" in capsys.readouterr().err
    assert main(["distill", str(tmp_path), "-o", str(out)]) == 1
    assert "not a model folder" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "mnn"])
def test_a_guidance_embedding_student_exports_with_its_guidance_baked_in(tiny_pipe, tmp_path, fmt):
    """The graph keeps the published transformer inputs (the engine feeds no guidance); the exported folder runs
    the student without CFG and edits as the PyTorch student does."""
    import dataclasses

    import numpy as np
    from PIL import Image

    from sanaedit.export.folder import export_model

    if fmt == "mnn":
        pytest.importorskip("MNN")
    transformer = tiny_pipe.transformer.with_guidance_embedding()
    torch.nn.init.normal_(transformer.time_embed.guidance_embedder.linear_2.weight, std=0.5)  # the scale matters
    config = dataclasses.replace(tiny_pipe.config, sampler="scm", schedule="scm", num_inference_steps=2)  # a copy
    student = SanaEditPipeline.from_modules(transformer.eval(), tiny_pipe.vae, tiny_pipe.text_encoder, config)
    folder = student.save_pretrained(tmp_path / "student")
    out = export_model(folder, tmp_path / "export", fmt=fmt, progress=False)
    manifest = json.loads((out / "model_index.json").read_text())
    assert manifest["baked_guidance"] == pytest.approx(student.config.guidance_scale * 0.1)
    exported = SanaEditPipeline.from_pretrained(out)
    assert exported.config.guidance_scale == 1.0 and exported.config.sampler == "scm"
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    ours = np.asarray(exported(photo, generator=torch.Generator().manual_seed(0)).images[0], dtype=float)
    torch_student = SanaEditPipeline.from_pretrained(folder)
    ref = np.asarray(torch_student(photo, generator=torch.Generator().manual_seed(0)).images[0], dtype=float)
    told_other = torch_student(photo, guidance_scale=1.0, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.abs(ours - ref).mean() < 1.0  # the same edit (8-bit graphs: within a grey level on average)
    assert np.abs(np.asarray(told_other, dtype=float) - ref).mean() > 2 * np.abs(ours - ref).mean()


def test_adaptive_weight_starts_as_the_plain_loss_and_learns_to_trust_clean_levels():
    """sCM's adaptive weighting: logvar is 0 everywhere at the start (every level weighs 1), and fitted to errors
    that grow with the noise level it learns logvar ~ log(error) per level (the minimiser of e / exp(v) + v)."""
    from sanaedit.train.distill import AdaptiveWeight

    weight = AdaptiveWeight()
    sigma = torch.linspace(0.05, 1.0, 16)
    assert torch.equal(weight(sigma), torch.zeros(16))
    error = 0.01 + sigma**2  # noisier levels: larger, less trustworthy errors
    opt = torch.optim.Adam(weight.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        logvar = weight(sigma)
        (error * torch.exp(-logvar) + logvar).mean().backward()
        opt.step()
    learned = weight(sigma).detach()
    assert torch.allclose(learned, error.log(), atol=0.3)
    assert learned[0] < learned[-1]  # the clean end weighs most


def test_scm_distillation_trains_its_adaptive_weight_and_exports_without_it(tiny_model_dir, tiny_edit_pairs, tmp_path):
    extra = ["--train.distill.guidance=1", "--checkpoint.every=2"]
    losses = _distill(tiny_model_dir, tiny_edit_pairs, tmp_path / "s", "scm", 3, extra)
    assert len(losses) == 3 and all(loss == loss for loss in losses)
    student = tmp_path / "s" / "transformer" / "diffusion_pytorch_model.safetensors"
    from safetensors import safe_open

    with safe_open(student, "pt") as f:
        assert not [k for k in f.keys() if "adaptive" in k or "logvar" in k]
    run = tmp_path / ".s.distill-run"
    from safetensors.torch import load_file

    trained = load_file(run / "checkpoints" / "step-00000002" / "model.safetensors")  # the run keeps it (resumable)
    weight = [v for k, v in trained.items() if k.startswith("adaptive_weight.")]
    assert weight and any(v.abs().sum() > 0 for v in weight)  # it started at zero and was trained


# ------------------------------------------------------------------------------------------------------ LADD
def _ladd_parts(pipe, ladd=0.5):
    """DistillParts with LADD's discriminator on a copy of `pipe` (the parts freeze the teacher in place)."""
    import copy

    from sanaedit.train.config import DistillSettings
    from sanaedit.train.distill import DistillParts
    from sanaedit.train.stages import STAGES, apply_stage

    parts = DistillParts(copy.deepcopy(pipe), STAGES["distill"], DistillSettings(ladd=ladd, guidance=1.0))
    apply_stage(parts, STAGES["distill"])
    return parts


def _ladd_inputs(pipe, parts, seed=0):
    gen = torch.Generator().manual_seed(seed)
    size = pipe.config.resolution // pipe.vae_scale
    shape = (2, pipe.latent_channels, size, size)
    x0, ref, z = (torch.randn(shape, generator=gen) for _ in range(3))
    hidden, mask = parts.text_encoder.condition(parts.llm_features([pipe.config.prompt] * 2))
    return x0, ref, z, hidden.detach(), mask


def test_discriminator_taps_spread_sprints_blocks_over_the_teachers_depth():
    from sanaedit.train.distill import discriminator_taps, ladd_sigma

    assert discriminator_taps(20, None) == [2, 8, 14, 19]  # Sprint's own, on its 20-block teacher
    assert discriminator_taps(28, None) == [3, 11, 20, 27]
    assert discriminator_taps(2, None) == [0, 1]  # duplicates merged
    assert discriminator_taps(4, (3, 1, 1)) == [1, 3]
    with pytest.raises(ValueError, match="ladd_blocks.*0..3"):
        discriminator_taps(4, (4,))
    sigma = ladd_sigma(torch.randn(4000, generator=torch.Generator().manual_seed(0)))
    assert 0 < sigma.min() and sigma.max() < 1  # flow levels, biased towards the clean end (t_D's median ~0.83)
    median = trig_to_flow(torch.atan(torch.tensor(-0.6).exp() / 0.5))
    assert float(sigma.median()) == pytest.approx(float(median), abs=0.02)


def test_ladd_terms_reach_only_their_own_side(tiny_pipe):
    """One backward pass trains both: the adversarial term moves the student (through the frozen teacher) and not
    the heads; the hinge loss moves the heads and not the student."""
    parts = _ladd_parts(tiny_pipe)
    x0, ref, z, hidden, mask = _ladd_inputs(tiny_pipe, parts)
    sigma = torch.tensor([0.9, 0.5])
    s = sigma.view(-1, 1, 1, 1)
    fake = z - s * parts.flow.velocity(z, sigma, hidden, mask, ref)  # the student's x0
    generator, discriminator = parts.ladd_losses(fake, x0, torch.tensor([0.3, 0.6]), z, hidden, mask, ref)
    heads = list(parts.discriminator.parameters())
    student = list(parts.transformer.parameters())
    assert all(not p.requires_grad for p in parts.teacher.parameters())

    def grads(loss):
        found = torch.autograd.grad(loss, heads + student, retain_graph=True, allow_unused=True)
        moved = [g is not None and bool(g.abs().sum() > 0) for g in found]
        return any(moved[: len(heads)]), any(moved[len(heads) :])

    assert grads(generator) == (False, True)
    assert grads(discriminator) == (True, False)


def test_ladd_heads_learn_to_tell_edits_from_photos(tiny_pipe):
    """The discriminator machinery (teacher hooks, heads, hinge loss) learns: trained alone on real = one set of
    latents and fake = another, its hinge loss falls from its start (2: chance)."""
    parts = _ladd_parts(tiny_pipe)
    real, photo, z, hidden, mask = _ladd_inputs(tiny_pipe, parts)
    real = real.sign()  # two clearly different distributions of latents
    opt = torch.optim.Adam(parts.discriminator.parameters(), lr=1e-2)
    losses, gen = [], torch.Generator().manual_seed(1)
    for _ in range(100):
        noise = torch.randn(z.shape, generator=gen)
        _, loss = parts.ladd_losses(photo, real, torch.tensor([0.2, 0.4]), noise, hidden, mask, ref=None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    start, end = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert start > 1.8 and end < 0.75 * start  # measured 2.0 -> 1.2 (spectral norm keeps the heads' steps small)


def test_ladd_distillation_logs_its_terms_resumes_exactly_and_exports_without_its_heads(
    tiny_model_dir, tiny_edit_pairs, tmp_path
):
    from safetensors import safe_open
    from safetensors.torch import load_file

    extra = ["--train.distill.guidance=1", "--ladd", "0.5", "--checkpoint.every=2"]
    losses = _distill(tiny_model_dir, tiny_edit_pairs, tmp_path / "s", "ode", 4, extra)
    assert len(losses) == 4 and all(loss == loss for loss in losses)
    log = [json.loads(line) for line in (tmp_path / ".s.distill-run" / "log.jsonl").read_text().splitlines()]
    assert all({"ode", "adversarial", "discriminator"} <= record.keys() for record in log)
    total = [r["ode"] + 0.5 * r["adversarial"] + r["discriminator"] for r in log]
    assert [r["loss"] for r in log] == pytest.approx(total, rel=1e-4)
    student = tmp_path / "s" / "transformer" / "diffusion_pytorch_model.safetensors"
    with safe_open(student, "pt") as f:
        assert not [k for k in f.keys() if "discriminator" in k or "heads" in k]
    kept = load_file(tmp_path / ".s.distill-run" / "checkpoints" / "step-00000002" / "model.safetensors")
    assert any(k.startswith("discriminator.heads.") for k in kept)  # the run keeps them (resumable)
    # lose everything after the step-2 checkpoint, as a kill would, and resume: the same steps 3-4, bit for bit
    straight = load_file(student)
    run = tmp_path / ".s.distill-run"
    for name in ("model", "done.json", "log.jsonl"):
        path = run / name
        path.unlink() if path.is_file() else shutil.rmtree(path)
    again = _distill(tiny_model_dir, tiny_edit_pairs, tmp_path / "s", "ode", 4, [*extra, "--resume"])
    assert again == losses[2:]
    resumed = load_file(student)
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
