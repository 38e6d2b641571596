"""`sanaedit serve`: the web page on one model instance with a bounded queue."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sanaedit.apps.cli import add_command, add_lora_arg, add_runtime_args, check_device, float_range, int_range
from sanaedit.core.choices import Vae

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    from sanaedit.apps.serve.app import create_app, pipeline_editor
    from sanaedit.apps.serve.device import device_files
    from sanaedit.apps.serve.http import uvicorn_options
    from sanaedit.apps.serve.security import host_policy, resolve_token
    from sanaedit.apps.serve.server import serve
    from sanaedit.formats.index import follows_prompts
    from sanaedit.load import load_pipeline

    token = resolve_token(args.token)  # checked before the model loads
    allowed_hosts, warning = host_policy(args.host, token, args.allowed_host)
    check_device(args.device)
    pipe = load_pipeline(
        args.model, device=args.device, dtype=args.dtype, backend=args.backend, loras=args.lora, vae=args.vae
    )
    cfg = pipe.config
    edit = pipeline_editor(pipe)
    warm_up(edit, cfg)
    in_browser, why_not = device_files(args.model, args.lora, args.vae)  # the same model, in the visitor's browser
    if why_not:
        logger.info(f"sanaedit: 'run on this device' is off: {why_not}")
    app = create_app(
        edit,
        Path(args.output),
        max_queued=args.queue,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        defaults={
            "steps": cfg.num_inference_steps,
            "guidance": cfg.guidance_scale,
            "prompt": cfg.prompt,
            "follows_prompts": pipe.model_dir is None or follows_prompts(pipe.model_dir),
            "controlnet": pipe.flow.controlnet is not None,  # the page offers its control picker
        },
        allowed_hosts=allowed_hosts,
        token=token,
        in_browser=in_browser,
    )
    if warning:
        logger.warning(warning.removeprefix("warning: "))
    url = f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{args.port}"
    where = f"; in the browser: {url}/device/" if in_browser else ""
    print(f"sanaedit: serving on {url}{f'/?token={token}' if token else ''}  (results in {args.output}{where})")
    serve(app, host=args.host, port=args.port, **uvicorn_options())
    return 0


def warm_up(edit, cfg) -> None:
    """One 1-step edit at the model's settings before the first user's: the first call pays one-off costs
    (allocator growth, kernel and cache set-up), which would otherwise sit under that job's "step 0"."""
    from PIL import Image

    size = cfg.resolution
    logger.info("sanaedit: warming the model up (one 1-step edit) ...")
    edit(Image.new("RGB", (size, size), "gray"), num_inference_steps=1, guidance_scale=cfg.guidance_scale, seed=0)


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "serve",
        "a web page to edit photos, on the server or in the visitor's browser (one model, bounded queue)",
        examples="""
sanaedit serve                                       http://127.0.0.1:7860, the bundled model
sanaedit serve --model DIR --port 8080 -o results/   results written only in results/
sanaedit serve --host 0.0.0.0 --token auto           reachable from other machines, with an access token""",
    )
    p.add_argument("--model", default=None, metavar="DIR", help="model or exported folder (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int_range(0, 65535), default=7860, help="TCP port (default: 7860; 0 = any free port)")
    p.add_argument(
        "-o",
        "--output",
        default="sanaedit-results",
        metavar="DIR",
        help="folder for results, the only place it writes (default: sanaedit-results)",
    )
    p.add_argument(
        "--queue", type=int_range(1), default=8, metavar="N", help="jobs that may wait; more get HTTP 503 (default: 8)"
    )
    p.add_argument(
        "--max-upload-mb",
        type=float_range(0.01),
        default=25.0,
        metavar="MB",
        help="largest photo accepted, in MiB; larger ones get HTTP 413 (default: 25)",
    )
    p.add_argument(
        "--token",
        default=None,
        metavar="TOKEN",
        help="require this access token (16+ characters; 'auto' makes one and prints the address with it); for use "
        "beyond this machine (default: $SANAEDIT_TOKEN, else none)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name the server answers to besides the address it listens on (repeatable; DNS-rebinding guard)",
    )
    add_runtime_args(p)
    add_lora_arg(p)
    p.add_argument(
        "--vae",
        choices=[v.value for v in Vae],
        default=None,
        help="autoencoder: full (DC-AE) or tiny (the folder's light one; the DC-AE is not loaded) (default: the "
        "model's own)",
    )
    p.set_defaults(func=run)
