"""``mvptr doctor``: check, before a long run, every file it will read, the disk its checkpoints
need and the device and precision it will use (``mvptr.workflows.doctor``)."""

from __future__ import annotations

from ..tasks.table import TASKS, load_config
from ..workflows.doctor import STAGES, diagnose
from .common import add_config_args

HELP = "check a run's data files, disk, device and precision before it starts"


def cmd_doctor(args) -> None:
    cfg = load_config(args.config, args.overrides)
    stages = list(STAGES) if args.stage == "both" else [] if args.stage == "none" else [args.stage]
    checks = diagnose(cfg, stages, list(dict.fromkeys(args.task)), args.config, args.overrides,
                      report=lambda c: print(c.line(), flush=True))
    warned = sum(c.status == "warn" for c in checks)
    print(f"{len(checks)} checks passed" + (f", {warned} with a warning" if warned else ""))


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("doctor", help=HELP, description=HELP + ". One line per check (ok, warn, FAIL); "
                              "the first problem that would stop the run stops it too (exit status 2).")
    add_config_args(p)
    p.add_argument("--stage", choices=[*STAGES, "both", "none"], default="both",
                   help="the pre-training stages the run trains (none: fine-tuning only)")
    p.add_argument("--task", action="append", default=[], choices=list(TASKS),
                   help="a task the run fine-tunes: its files must be there (may be repeated)")
    p.set_defaults(func=cmd_doctor)
