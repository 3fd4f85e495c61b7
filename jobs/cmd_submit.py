"""``somnray submit``: run a somnray workflow on a Ray cluster as a Ray job.

Examples::

    somnray submit prepare s3://bucket/shhs/manifest.csv --profile shhs --out s3://bucket/prepared \\
        --address http://HEAD:8265
    somnray submit train jobs/configs/coresleep_shhs.yaml --set optim.max_steps=2000 --follow
    somnray submit tune jobs/configs/coresleep_shhs.yaml space.yaml --address http://HEAD:8265 --wait
    somnray submit score s3://bucket/runs/coresleep-shhs s3://bucket/new/*.edf --out s3://bucket/scored

Everything after the sub-command is what ``somnray <command>`` itself takes; the options below may
appear anywhere.  The command is validated here first (experiment configs completely, with every
error listed; cohort profiles; URIs): a malformed command exits 1 and nothing is submitted.

The code runs from a wheel built from this checkout (cached by source hash under
``~/.cache/somnray/wheels``) shipped with the job, unless ``--use-installed`` says the cluster's
image already has the right somnray.  Only the config files the command names are uploaded (as
the job's ``working_dir``), never the repository.  Paths inside configs and local-path arguments
are read on the cluster: use URIs (``s3://...``) for a remote cluster.

Exit status: 0 submitted (or, with ``--wait``/``--follow``, the job succeeded); 1 invalid command
or submission failure; with ``--wait``/``--follow``, the job's own exit status when it failed.
Without ``--wait``, the last line printed is the job id.
"""

from __future__ import annotations

import argparse
import sys


def _add_submit_options(p: argparse.ArgumentParser) -> None:
    from somnray.jobs.submit import DEFAULT_ADDRESS

    p.add_argument("--address", default=None, metavar="URL",
                   help=f"Ray Jobs API of the cluster, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, "
                        f"$RAY_ADDRESS, else {DEFAULT_ADDRESS})")
    p.add_argument("--use-installed", action="store_true",
                   help="run the somnray installed in the cluster's image; build and ship no wheel")
    p.add_argument("--source", default=None, metavar="DIR",
                   help="checkout to build the wheel from (default: the one this somnray runs from)")
    p.add_argument("--wait", action="store_true", help="wait for the job to finish; exit with its status")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it finishes (implies --wait)")
    p.add_argument("--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="environment variable of the job (repeatable; KEY alone copies the local value). "
                        "Visible in the dashboard: pass credentials through the cluster's own environment")
    p.add_argument("--submission-id", default=None, metavar="ID", help="job id (default: Ray's raysubmit_...)")
    p.add_argument("--entrypoint-num-cpus", type=float, default=None, metavar="N",
                   help="CPUs reserved for the job's driver process (default 0)")
    p.add_argument("--entrypoint-num-gpus", type=float, default=None, metavar="N",
                   help="GPUs reserved for the job's driver process (default 0)")


#: One line for ``somnray --help``.
HELP = "run prepare/train/tune/score on a Ray cluster (Ray Jobs API)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare ``submit``'s own options, COMMAND and its arguments (parsed by :func:`run` with the
    command's own declaration, ``somnray.jobs.cmd_<command>.add_arguments``)."""
    from somnray.jobs.submit import SUBMITTABLE

    _add_submit_options(p)
    p.add_argument("workflow", choices=SUBMITTABLE, metavar="COMMAND",
                   help=f"the somnray sub-command to run: {', '.join(SUBMITTABLE)}")
    p.add_argument("workflow_args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="its arguments, as `somnray COMMAND` takes them")


def split_submit_options(args: argparse.Namespace) -> tuple[argparse.Namespace, list[str]]:
    """Pull ``submit``'s own options out of the arguments after COMMAND.

    argparse hands everything after COMMAND to the workflow (so its options need no ``--``); the
    submit options given there are parsed here, the rest is returned in order.
    """
    from somnray.jobs.cli import SomnrayParser

    own = SomnrayParser(prog="somnray submit", add_help=False, allow_abbrev=False)
    _add_submit_options(own)
    later, rest = own.parse_known_args(args.workflow_args)
    merged = argparse.Namespace(**vars(args))
    for key, value in vars(later).items():
        default = own.get_default(key)
        if key == "env":
            merged.env = list(args.env) + list(value)
        elif value != default:
            setattr(merged, key, value)
    return merged, rest


def run(args: argparse.Namespace) -> int:
    """Validate, package and submit; optionally wait or follow.

    Returns 0 once submitted; with ``--wait``/``--follow`` the job's own exit status (130 when
    watching is interrupted; the job keeps running).
    """
    from somnray.core.errors import SomnrayError
    from somnray.jobs import submit as sub

    args, workflow_argv = split_submit_options(args)
    try:
        prepared = sub.prepare_command(args.workflow, workflow_argv)
        env_vars = sub.parse_env(args.env)
        for warning in prepared.warnings:
            print(f"somnray submit: warning: {warning}", file=sys.stderr)
        if prepared.summary:
            print(f"validated: {prepared.summary}")
        job = sub.submit(prepared, address=args.address, use_installed=args.use_installed,
                         source=args.source, env_vars=env_vars, submission_id=args.submission_id,
                         entrypoint_num_cpus=args.entrypoint_num_cpus,
                         entrypoint_num_gpus=args.entrypoint_num_gpus)
    except SomnrayError as exc:
        exc.add_note("nothing was submitted.")
        raise
    code = (f"wheel {job.wheel.wheel.name} (sources {job.wheel.source_hash})" if job.wheel
            else "the cluster's installed somnray")
    print(f"submitted {job.submission_id} to {job.address}: {job.entrypoint}  [{code}]")
    if not (args.wait or args.follow):
        print(f"follow with: somnray jobs logs {job.submission_id} --follow --address {job.address}")
        print(job.submission_id)
        return 0

    client = sub.connect(job.address)
    try:
        with sub.job_api_errors(f"watching {job.submission_id}"):
            status = (sub.follow_logs(client, job.submission_id) if args.follow
                      else sub.wait(client, job.submission_id))
    except KeyboardInterrupt:
        print(f"\nstopped watching; the job keeps running (somnray jobs stop {job.submission_id})",
              file=sys.stderr)
        return 130
    print(f"job {job.submission_id}: {status}")
    return sub.exit_code_of(client, job.submission_id, status)
