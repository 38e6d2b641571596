"""`sanaedit serve`: the web page on one model instance with a bounded queue."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_runtime_args


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..defaults import load_pipeline
    from ..serve.app import create_app, pipeline_editor

    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, backend=args.backend)
    cfg = pipe.config
    app = create_app(
        pipeline_editor(pipe),
        Path(args.out),
        max_queued=args.queue,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        defaults={"steps": cfg.num_inference_steps, "guidance": cfg.guidance_scale},
    )
    print(f"sanaedit: serving on http://{args.host}:{args.port}  (results in {args.out})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="a web page to edit photos (one model, bounded queue)")
    p.add_argument("--model", default=None, metavar="DIR", help="model folder (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--out", default="sanaedit-results", help="folder for results (the only place it writes)")
    p.add_argument("--queue", type=int, default=8, help="jobs that may wait; more get HTTP 503")
    p.add_argument("--max-upload-mb", type=float, default=25.0)
    add_runtime_args(p)
    p.set_defaults(func=run)
