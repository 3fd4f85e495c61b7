"""``somnray cohorts``: follow or cancel a cohort job of a running ``somnray serve``.

Examples::

    somnray cohorts status cohort-3f2a... --url http://127.0.0.1:8000
    somnray cohorts cancel cohort-3f2a... --url http://127.0.0.1:8000

The bearer token is read from the variable ``--token-env`` names, as ``somnray serve`` does.
``status`` prints the job's state as JSON and exits 0 while it runs or once it succeeded, 1 when
it failed or was cancelled; ``cancel`` prints the cancelled job's state.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request

#: One line for ``somnray --help``.
HELP = "status / cancel a cohort job of a running somnray serve"
#: Seconds to wait for the service's answer.
TIMEOUT_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the actions of ``somnray cohorts`` and their arguments."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("job_id", metavar="JOB_ID", help="the id POST /v1/cohorts answered")
    common.add_argument("--url", default="http://127.0.0.1:8000", metavar="URL",
                        help="the service (default: http://127.0.0.1:8000)")
    common.add_argument("--token-env", default="SOMNRAY_SERVE_TOKEN", metavar="VAR",
                        help="environment variable holding the service's bearer token "
                             "(default: SOMNRAY_SERVE_TOKEN)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("status", parents=[common], help="the job's progress, as JSON")
    actions.add_parser("cancel", parents=[common], help="cancel a running job")


def run(args: argparse.Namespace) -> int:
    """Ask the service; returns 0, or 1 for a failed or cancelled job (``status``)."""
    from somnray.core.errors import ServingError

    url = f"{args.url.rstrip('/')}/v1/cohorts/{args.job_id}"
    request = urllib.request.Request(url, method="GET" if args.action == "status" else "DELETE")
    token = os.environ.get(args.token_env)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
            state = json.load(answer)
    except urllib.error.HTTPError as exc:
        try:
            detail = json.load(exc).get("detail", exc.reason)
        except ValueError:  # not the service's JSON (a proxy's page): its status says enough
            detail = exc.reason
        raise ServingError(f"{url}: {exc.code} {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServingError(f"{url}: the service did not answer ({reason}); is somnray serve "
                           "running there?") from None
    print(json.dumps(state, indent=2))
    return 1 if args.action == "status" and state["status"] in ("failed", "cancelled") else 0
