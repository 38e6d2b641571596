"""Step distillation (SANA-Sprint's goal): a student that edits in 1-4 `scm` sampler steps, without a CFG batch.

The student is a copy of the frozen teacher (with a zero-initialised guidance embedding when the teacher uses CFG,
so it starts exactly as the teacher). Both sampling and training read the student as an x0 predictor in flow terms,
x0 = x - sigma v(x, sigma): that is what `sampling.scm_sample` steps with, and what both objectives train.

    ode  (default)  the teacher's own sampler runs its N steps (with CFG) from noise z to x0_T; the student, at one
                    of the few-step `scm` noise levels, learns to predict x0_T in one call: from z itself at sigma 1
                    (the first step), from (1 - s) x0_T + s z' with fresh z' at the later levels (what `scm_sample`
                    feeds it after re-noising). Knowledge distillation on the teacher's trajectories (Luhman &
                    Luhman 2021), on exactly the inputs the few-step sampler produces.
    scm             continuous-time consistency (sCM) in flow terms: f(x, s) = x - s v must stay constant along the
                    teacher's ODE (dx/ds = v_T, with CFG). With the stop-gradient copy, df/ds = v_T - v - s dv/ds
                    (a JVP along (v_T, 1)); the student's s v moves towards its own value plus that tangent,
                    normalised g / (|g| + c), its dv/ds term warmed up over `tangent_warmup` steps, each sample's
                    error weighted by a learned logvar of its noise level (err / exp(logvar) + logvar: levels
                    where the target is noisy weigh less) -- SANA-Sprint's sCM recipe (tangent warm-up, tangent
                    normalisation, adaptive weighting; its logvar reads the DiT's time embedding, ours Fourier
                    features of sigma, so the student's own weights stay as they export).
    + ladd          (`ladd` > 0, with either objective) SANA-Sprint's latent adversarial distillation: the student's
                    x0 and the data's target latent are re-noised to a level sigma_D (Sprint's t_D ~ atan(e^N(-0.6,
                    1) / 0.5)); the frozen teacher reads them, and small heads on a few of its blocks' tokens
                    (spectral-norm convs, batch norm, leaky ReLU: Sprint's design) tell real from fake, a real target
                    paired with another photo's source counting as fake too (the head must check the edit, not
                    only the style). Hinge loss for the heads, `-ladd * mean D(fake)` for the student. The heads are
                    trained beside the student and never exported. Both gradients come out of the one backward pass
                    each step: the student's term is computed with the heads frozen, the heads' on detached fakes.

Why `ode` is the default: our editing task maps a photo to nearly one answer, so the teacher's trajectories are
smooth and cheap to regress on, and on the bundled model it measures best of `ode`, `ode` + LADD and `scm` after the
same 600 steps: closest to the teacher's own 10-step edit at one step, level with it against the comic filter at
1-4 steps (docs/training.md, bench/results/fast-path-comic-2026-12-03.json).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sanaedit.core.choices import Sampler, Schedule
from sanaedit.core.flow import FlowModel
from sanaedit.core.sampling import flow_sigmas, get_sampler, scm_times, trig_to_flow
from sanaedit.models.torch_flow import torch_flow
from sanaedit.pipeline import SanaEditPipeline
from sanaedit.train.parts import TrainParts
from sanaedit.train.stage_settings import DistillSettings
from sanaedit.train.stages import Stage

OBJECTIVES = ("ode", "scm")
SPRINT_TAPS = (2, 8, 14, 19)  # the teacher blocks SANA-Sprint's heads read, of its 20: spread over ours by depth


class AdaptiveWeight(nn.Module):
    """logvar(sigma) for sCM's adaptive loss weighting: a linear map of Fourier features of the noise level, zero at
    the start (every level weighs 1, the plain loss). Trained with the student, never exported."""

    def __init__(self, features: int = 32):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000), features)), persistent=False)
        self.linear = nn.Linear(2 * features, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        angles = sigma.float().reshape(-1, 1) * self.freqs
        return self.linear(torch.cat([angles.sin(), angles.cos()], dim=1)).squeeze(1)


class DiscriminatorHead(nn.Module):
    """A LADD head: the tokens of one frozen teacher block -> a realness logit per token."""

    def __init__(self, channels: int):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm

        def block(kernel: int) -> nn.Sequential:
            conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, padding_mode="circular")
            return nn.Sequential(sn(conv), nn.BatchNorm1d(channels), nn.LeakyReLU(0.2))

        self.pointwise, self.mix, self.out = block(1), block(9), sn(nn.Conv1d(channels, 1, 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.pointwise(tokens.float().transpose(1, 2))
        return self.out((x + self.mix(x)) / math.sqrt(2)).flatten(1)


class Discriminator(nn.Module):
    """LADD's discriminator: the frozen teacher's tokens at a few blocks (`taps`), one head each. The teacher is
    passed in, not held: its weights are not this module's (and stay frozen)."""

    def __init__(self, teacher: nn.Module, taps: list[int]):
        super().__init__()
        self.taps = taps
        width = teacher.config.num_attention_heads * teacher.config.attention_head_dim
        self.heads = nn.ModuleList(DiscriminatorHead(width) for _ in taps)

    def features(self, teacher_flow: FlowModel, x: torch.Tensor, sigma: torch.Tensor, *condition) -> list:
        """The teacher blocks' output tokens on noisy latents x at flow level sigma (the rest of its output unused)."""
        captured: dict[int, torch.Tensor] = {}
        blocks = teacher_flow.transformer.transformer_blocks
        keep = lambda i: lambda _module, _inputs, out: captured.__setitem__(i, out)  # noqa: E731
        hooks = [blocks[i].register_forward_hook(keep(i)) for i in self.taps]
        try:
            teacher_flow.velocity(x, sigma, *condition)
        finally:
            for hook in hooks:
                hook.remove()
        return [captured[i] for i in self.taps]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([head(f) for head, f in zip(self.heads, features)], dim=1)


def discriminator_taps(depth: int, taps: tuple[int, ...] | None) -> list[int]:
    """The teacher blocks the heads read: as given, else Sprint's four spread over this depth."""
    if taps:
        bad = [i for i in taps if not 0 <= i < depth]
        if bad:
            raise ValueError(
                f"config key 'train.distill.ladd_blocks': {bad} not in the teacher's blocks 0..{depth - 1}"
            )
        return sorted(set(taps))
    return sorted({round(i * (depth - 1) / 19) for i in SPRINT_TAPS})


def ladd_sigma(u: torch.Tensor) -> torch.Tensor:
    """Sprint's discriminator noise level from a standard normal u: t_D = atan(e^(u - 0.6) / 0.5), as flow sigma."""
    return trig_to_flow(torch.atan(torch.exp(u.float() - 0.6) / 0.5))


def student_levels(max_steps: int) -> torch.Tensor:
    """The flow noise levels an `scm` sampler of 1..max_steps steps calls the model at (sigma 1 first)."""
    levels = torch.cat([torch.from_numpy(trig_to_flow(scm_times(n)[:-1])) for n in range(1, max_steps + 1)])
    return torch.unique(levels.float()).flip(0)


class DistillParts(TrainParts):
    """A frozen teacher and its student; `forward` returns the distillation loss of a batch of editing triples."""

    def __init__(self, pipe: SanaEditPipeline, stage: Stage, settings: DistillSettings):
        super().__init__(pipe, stage)
        self.settings = settings
        self.guidance = float(settings.guidance or pipe.config.guidance_scale)
        if self.transformer.config.get("guidance_embeds"):
            raise ValueError("the teacher already embeds the guidance scale (a distilled student): distil a teacher")
        teacher = self.transformer.eval().requires_grad_(False)
        student = teacher.with_guidance_embedding() if self.guidance > 1 else copy.deepcopy(teacher)
        self.teacher, self.transformer = teacher, student.train()
        self.teacher_flow, self.flow = self.flow, torch_flow(student, self.vae)
        config = pipe.config
        self.teacher_sampler = get_sampler(config.sampler if config.sampler != Sampler.SCM else Sampler.EULER)
        teacher_schedule = config.schedule if config.schedule != Schedule.SCM else Schedule.DEFAULT
        self.teacher_sigmas = flow_sigmas(
            settings.teacher_steps or config.num_inference_steps, config.shift, teacher_schedule
        )
        self.levels = student_levels(settings.max_steps)
        use_weight = settings.objective == "scm" and settings.adaptive_weight
        self.adaptive_weight = AdaptiveWeight() if use_weight else None
        self.objective_modules = [self.adaptive_weight] if use_weight else []  # trained beside the student
        self.discriminator = None
        if settings.ladd > 0:
            taps = discriminator_taps(len(teacher.transformer_blocks), settings.ladd_blocks)
            self.discriminator = Discriminator(teacher, taps).to(self.vae.device)
            self.objective_modules.append(self.discriminator)
        self.last_terms: dict[str, float] = {}  # the last step's loss terms, for the training log
        self.negative_prompt = config.negative_prompt
        self.step = 0  # optimizer steps so far (the loop sets it): the sCM tangent warm-up reads it

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The optimizer's groups: LADD's heads, which learn from scratch, at their own rate (`ladd_lr`)."""
        if self.discriminator is None:
            return [{"params": list(self.parameters())}]
        heads = list(self.discriminator.parameters())
        ids = {id(p) for p in heads}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": rest}, {"params": heads, "lr": self.settings.ladd_lr or 10 * lr}]

    def export_defaults(self) -> dict[str, Any]:
        """What the student's model folder records: the few-step sampler, its schedule and step count."""
        return {"sampler": Sampler.SCM, "schedule": Schedule.SCM, "num_inference_steps": self.settings.steps,
                "guidance_scale": self.guidance}  # fmt: skip

    # ------------------------------------------------------------------------------------------- teacher
    def teacher_velocity(self, hidden: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor | None):
        """The teacher's dx/dsigma with per-sample conditioning, CFG as one [uncond; cond] batch."""
        flow, g = self.teacher_flow, self.guidance
        if g <= 1:
            return lambda x, s: flow.velocity(x, s, hidden, mask, ref).float()
        neg_hidden, neg_mask = self.text_encoder.condition(self.llm_features([self.negative_prompt] * len(hidden)))
        both = (torch.cat([neg_hidden, hidden]), torch.cat([neg_mask, mask]))
        refs = None if ref is None else torch.cat([ref, ref])

        def guided(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            s = torch.as_tensor(s).reshape(-1).expand(len(x))
            uncond, cond = flow.velocity(torch.cat([x, x]), torch.cat([s, s]), *both, refs).float().chunk(2)
            return uncond + g * (cond - uncond)

        return guided

    # ---------------------------------------------------------------------------------------------- loss
    def forward(self, batch: dict[str, Any], noise: torch.Tensor | None = None, t: torch.Tensor | None = None):
        if "target_latents" in batch:
            x0, ref = batch["target_latents"], batch.get("ref_latents")
        else:
            with torch.no_grad():
                x0, ref = self.encode_images(batch["target"]), self.encode_images(batch["source"])
        x0 = x0.float()
        noise = torch.randn_like(x0) if noise is None else noise.to(x0)
        feats = batch["llm_features"] if "llm_features" in batch else self.llm_features(batch["prompt"])
        with torch.no_grad():
            hidden, mask = self.text_encoder.condition(feats)
        teacher = self.teacher_velocity(hidden, mask, ref)
        student = lambda x, s: self.flow.velocity(x, s, hidden, mask, ref, self.guidance).float()  # noqa: E731
        fresh = batch.get("fresh_noise")
        fresh = torch.randn_like(x0) if fresh is None else fresh.to(x0)
        if self.settings.objective == "ode":
            level_u = batch.get("level_u")
            level_u = torch.rand(len(x0)) if level_u is None else level_u
            loss, x0_student = self.ode_loss(teacher, student, noise, fresh, level_u)
        else:
            t = torch.rand(len(x0)) if t is None else t
            loss, x0_student = self.scm_loss(teacher, student, x0, noise, t.to(x0.device))
        self.last_terms = {self.settings.objective: float(loss.detach())}
        if self.discriminator is None:
            return loss
        ladd_u, ladd_noise = batch.get("ladd_u"), batch.get("ladd_noise")
        ladd_u = torch.randn(len(x0)) if ladd_u is None else ladd_u
        ladd_noise = torch.randn_like(x0) if ladd_noise is None else ladd_noise.to(x0)
        generator, discriminator = self.ladd_losses(x0_student, x0, ladd_sigma(ladd_u).to(x0.device), ladd_noise,
                                                    hidden, mask, ref)  # fmt: skip
        self.last_terms.update(adversarial=float(generator.detach()), discriminator=float(discriminator.detach()))
        return loss + self.settings.ladd * generator + discriminator

    def ode_loss(self, teacher, student, z: torch.Tensor, fresh: torch.Tensor, level_u: torch.Tensor):
        """MSE between the student's one-call x0 at an `scm` level and the teacher's N-step result from z; and
        that x0."""
        with torch.no_grad():
            x0_teacher = self.teacher_sampler(teacher, z, self.teacher_sigmas).float()
        # half the draws at sigma 1 (the first step: every few-step edit starts there), the rest over the others
        u, n = level_u.reshape(-1).float().cpu(), len(self.levels)
        later = (1 + ((u - 0.5) * 2 * (n - 1)).long()).clamp(1, max(n - 1, 1))
        index = torch.where((u < 0.5) | (n == 1), 0, later)
        sigma = self.levels[index].to(z.device)
        s = sigma.view(-1, 1, 1, 1)
        first = (index == 0).to(z.device).view(-1, 1, 1, 1)
        x = torch.where(first, z, (1 - s) * x0_teacher + s * fresh)
        x0_student = x - s * student(x, sigma)
        return F.mse_loss(x0_student, x0_teacher), x0_student

    def scm_loss(self, teacher, student, x0: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor):
        """sCM in flow terms (see the module docstring): MSE(s v, sg(s v + g)), g the normalised tangent; and the
        student's x0."""
        s = sigma.view(-1, 1, 1, 1).float()
        x = (1 - s) * x0 + s * z
        with torch.no_grad():
            v_teacher = teacher(x, sigma)
            # forward-mode AD through attention needs SDPA's math kernel (the fused CPU kernel has no JVP)
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.MATH):
                v_now, dv_ds = torch.func.jvp(student, (x, sigma), (v_teacher, torch.ones_like(sigma)))
            warmup = min(1.0, self.step / max(self.settings.tangent_warmup, 1))
            g = v_teacher - v_now - warmup * s * dv_ds
            norm = g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) / g[0].numel() ** 0.5
            target = s * v_now + g / (norm + self.settings.tangent_norm)
        scaled_v = s * student(x, sigma)
        error = (scaled_v - target).float().pow(2).flatten(1).mean(dim=1)
        x0_student = x - scaled_v
        if self.adaptive_weight is None:
            return error.mean(), x0_student
        logvar = self.adaptive_weight(sigma)
        return (error * torch.exp(-logvar) + logvar).mean(), x0_student

    def ladd_losses(self, fake: torch.Tensor, real: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor,
                    hidden: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor | None):  # fmt: skip
        """(the student's adversarial loss, the heads' hinge loss) for x0s `fake` (the student's) and `real` (the
        data's), both re-noised to `sigma` with `z`. Each term's gradient reaches only its own side."""
        s = sigma.view(-1, 1, 1, 1)
        noisy = lambda x0: (1 - s) * x0 + s * z  # noqa: E731
        disc, flow = self.discriminator, self.teacher_flow
        disc.requires_grad_(False)  # the student's term: through the frozen teacher, heads fixed
        fake_features = disc.features(flow, noisy(fake), sigma, hidden, mask, ref)
        generator = -disc(fake_features).mean()
        disc.requires_grad_(True)
        with torch.no_grad():
            real_features = disc.features(flow, noisy(real), sigma, hidden, mask, ref)
            fakes = [[f.detach() for f in fake_features]]
            if ref is not None and len(real) > 1:  # a real target with another photo's source: a fake edit
                fakes.append(disc.features(flow, noisy(real), sigma, hidden, mask, ref.roll(1, dims=0)))
        hinge_fake = torch.stack([F.relu(1 + disc(f)).mean() for f in fakes]).mean()
        return generator, F.relu(1 - disc(real_features)).mean() + hinge_fake
