"""``somnray jobs``: list, inspect, follow and stop jobs on a Ray cluster.

Examples::

    somnray jobs list --address http://HEAD:8265
    somnray jobs status raysubmit_AbC123
    somnray jobs logs raysubmit_AbC123 --follow
    somnray jobs stop raysubmit_AbC123

``status`` exits 0 when the job succeeded or is still pending/running, 1 when it failed or was
stopped (or the job does not exist); ``logs --follow`` returns once the job ends, with the exit
status ``somnray submit --wait`` would give.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys


#: One line for ``somnray --help``.
HELP = "list / status / logs / stop Ray jobs on a cluster"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the actions of ``somnray jobs`` and their arguments."""
    from somnray.jobs.submit import DEFAULT_ADDRESS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", default=None, metavar="URL",
                        help=f"Ray Jobs API of the cluster (default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, "
                             f"else {DEFAULT_ADDRESS})")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", parents=[common], help="every job of the cluster, newest first")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--all", action="store_true",
                    help="also jobs not submitted through the Jobs API (drivers started by hand)")
    st = actions.add_parser("status", parents=[common], help="state of one job")
    st.add_argument("job_id", metavar="ID")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    lg = actions.add_parser("logs", parents=[common], help="the job's driver output")
    lg.add_argument("job_id", metavar="ID")
    lg.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    sp = actions.add_parser("stop", parents=[common], help="stop a pending or running job")
    sp.add_argument("job_id", metavar="ID")


def _time(ms: int | None) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _row(job) -> dict:
    return {
        "submission_id": job.submission_id,
        "status": str(job.status.value) if hasattr(job.status, "value") else str(job.status),
        "command": (job.metadata or {}).get("somnray_command", ""),
        "start": _time(job.start_time),
        "end": _time(job.end_time),
        "entrypoint": job.entrypoint,
        "message": job.message or "",
        "driver_exit_code": getattr(job, "driver_exit_code", None),
    }


def run(args: argparse.Namespace) -> int:
    """Carry out the action; returns 0, or the job's status (``status``, ``logs --follow``)."""
    from somnray.jobs import submit as sub

    client = sub.connect(args.address)
    with sub.job_api_errors(f"{args.action} {getattr(args, 'job_id', '')}".strip()):
        if args.action == "list":
            return _list(client, args)
        if args.action == "status":
            row = _row(client.get_job_info(args.job_id))
            if args.json:
                print(json.dumps(row, indent=2))
            else:
                exit_code = row["driver_exit_code"]
                print(f"{row['submission_id']}: {row['status']}"
                      + (f" (driver exit code {exit_code})" if exit_code not in (None, 0) else ""))
                if row["message"]:
                    print(f"  {row['message']}")
                print(f"  started {row['start']}, ended {row['end']}")
                print(f"  {row['entrypoint']}")
            return 1 if row["status"] in ("FAILED", "STOPPED") else 0
        if args.action == "logs":
            if args.follow:
                status = sub.follow_logs(client, args.job_id)
                print(f"job {args.job_id}: {status}", file=sys.stderr)
                return sub.exit_code_of(client, args.job_id, status)
            sys.stdout.write(client.get_job_logs(args.job_id))
            return 0
        # stop
        stopped = client.stop_job(args.job_id)
        status = str(client.get_job_status(args.job_id).value)
        print(f"{args.job_id}: {'stop requested' if stopped else 'not running'} ({status})")
        return 0


def _list(client, args: argparse.Namespace) -> int:
    jobs = [j for j in client.list_jobs() if args.all or j.submission_id]
    rows = sorted((_row(j) for j in jobs), key=lambda r: r["start"], reverse=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no jobs")
        return 0
    header = ("ID", "STATUS", "COMMAND", "STARTED", "ENTRYPOINT")
    table = [header] + [(r["submission_id"] or "-", r["status"], r["command"] or "-", r["start"],
                         r["entrypoint"] if len(r["entrypoint"]) <= 80 else r["entrypoint"][:77] + "...")
                        for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row[:-1], widths)) + "  " + str(row[-1]))
    return 0
