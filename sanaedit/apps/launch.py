"""`--processes N`: start N processes of one command on this machine, as `torchrun --standalone` would, and end a
failure in one line per distinct reason.

Run directly, `torchrun` ends any failure with its own `ChildFailedError`: a 40-line traceback of the launcher and a
table of every process, under the workers' own one-line errors. Here the launch is torchrun's own code
(`torch.distributed.run`'s argument parsing and `elastic_launch`), with its log quietened: each worker writes its
reason to the error file torchrun names (`TORCHELASTIC_ERROR_FILE`, see `record_failure`) instead of stderr, and
this launcher prints each reason once, with the processes that gave it.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid

LAUNCHED_BY_US = "SANAEDIT_LAUNCHER"  # set for the workers: their errors go to the error file, the launcher says them


def record_failure(message: str) -> bool:
    """Write a worker's one-line reason where torchrun reads it (its error file, when launched by torchrun or by
    `launch`). True when the launcher will print it, so the worker need not."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return False
    try:
        with open(path, "w") as f:  # torchrun's own format: ProcessFailure reads "message" and "timestamp"
            json.dump({"message": message, "timestamp": int(time.time())}, f)
    except OSError:
        return False
    return os.environ.get(LAUNCHED_BY_US) == "1"


def launch(argv: list[str], processes: int) -> list[str]:
    """Run `sanaedit ARGV` as `processes` processes on this machine; the reasons it failed, each once with the
    processes that gave it (none when all succeeded)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    for name in ("torch.distributed.run", "torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # its banner and failure log: the workers speak for it
    os.environ[LAUNCHED_BY_US] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    # what `torchrun --standalone` sets up (torch.distributed.run.run), spelled out: `run` itself would log it
    standalone = ["--nnodes=1", "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", f"--rdzv-id={uuid.uuid4()}"]
    torchrun = parse_args([*standalone, f"--nproc-per-node={processes}", "-m", "sanaedit.apps.cli", *argv])
    config, entrypoint, args = config_from_args(torchrun)
    try:
        elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as err:
        reasons: dict[str, list[int]] = {}
        for rank, failure in sorted(err.failures.items()):
            if failure.exitcode > 0:  # the others were stopped by the launcher once one had failed
                reasons.setdefault(failure.message or f"exit status {failure.exitcode}", []).append(rank)
        return [f"{reason} (process {', '.join(map(str, ranks))} of {processes})" for reason, ranks in reasons.items()]
    return []
