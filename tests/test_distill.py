"""Step distillation (`sanaedit distill`, train/distill.py): a few-step, CFG-free student of a teacher."""

import json

import pytest
import torch

from sanaedit.cli import main
from sanaedit.image_io import load_image, preprocess
from sanaedit.pipeline import SanaEditPipeline
from sanaedit.sampling import flow_sigmas, get_sampler, trig_to_flow
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
