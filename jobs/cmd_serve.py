"""``somnray serve``: run the scoring service (Ray Serve + FastAPI) for a trained model.

Example::

    export SOMNRAY_SERVE_TOKEN=$(openssl rand -hex 24)
    somnray serve file:///runs/coresleep-shhs --port 8000 --storage-root file:///data/cohorts
    curl -H "Authorization: Bearer $SOMNRAY_SERVE_TOKEN" -F file=@night.edf \\
         http://127.0.0.1:8000/v1/score

It connects to the cluster named by ``RAY_ADDRESS`` or starts a local, loopback-only Ray
instance, deploys the app, prints its URL and blocks until Ctrl-C.  See ``docs/serving.md``.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys


#: One line for ``somnray --help``.
HELP = "serve a trained model over HTTP: score uploaded EDFs, run cohort jobs"
#: What ``somnray serve --help`` says first.
DESCRIPTION = (
    "Deploy the somnray scoring service on Ray Serve: POST /v1/score scores one uploaded "
    "EDF/EDF+/BDF night, POST /v1/cohorts starts a cohort scoring job (GET "
    "/v1/cohorts/{id} follows it), /review is the review page of --review roots, GET /healthz "
    "and /openapi.json describe the service.  "
    "Listens on 127.0.0.1 unless --host says otherwise.  Blocks until Ctrl-C."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``somnray serve``."""
    parser.add_argument("run_uri", metavar="RUN_URI",
                        help="training run (its model/ bundle) or model bundle folder: path, file://, "
                             "s3://; or models:/NAME/VERSION | models:/NAME@ALIAS")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default: 127.0.0.1; 0.0.0.0 exposes the service)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    parser.add_argument("--token-env", default="SOMNRAY_SERVE_TOKEN", metavar="VAR",
                        help="environment variable holding the bearer token clients must send "
                             "(default: SOMNRAY_SERVE_TOKEN; unset = no authentication)")
    parser.add_argument("--max-upload-mb", type=float, default=512.0, metavar="N",
                        help="largest accepted upload in MiB (default: 512)")
    parser.add_argument("--storage-root", action="append", default=[], metavar="URI", dest="storage_roots",
                        help="URI prefix cohort jobs may read manifests from and write outputs to "
                             "(repeatable; none = cohort jobs refused)")
    parser.add_argument("--review", action="append", default=[], metavar="URI", dest="review_roots",
                        help="scored output root with a review (somnray review) to open in the review "
                             "page at /review; must lie under a --storage-root (repeatable)")
    parser.add_argument("--profile", default=None, metavar="NAME",
                        help="default cohort profile of requests naming none (default: the model's)")
    parser.add_argument("--replicas", type=int, default=1, metavar="N",
                        help="model and preprocessing replicas (default: 1)")
    parser.add_argument("--max-batch-windows", type=int, default=64, metavar="N",
                        help="windows per batched forward pass across requests (default: 64)")
    parser.add_argument("--model-cpus", type=float, default=0.5, metavar="N",
                        help="CPUs each model replica reserves (default: 0.5)")
    parser.add_argument("--model-threads", type=int, default=None, metavar="N",
                        help="torch threads of each model replica on CPU (default: the node's CPUs "
                             "divided by the model replicas)")
    parser.add_argument("--preprocess-cpus", type=float, default=0.5, metavar="N",
                        help="CPUs each preprocessing replica reserves (default: 0.5)")
    parser.add_argument("--ingress-cpus", type=float, default=0.1, metavar="N",
                        help="CPUs the HTTP ingress replica reserves (default: 0.1)")
    parser.add_argument("--cohort-cpus", type=float, default=None, metavar="N",
                        help="CPUs each cohort job may hold (default: what the replicas leave of the "
                             "cluster, split between --max-cohort-jobs)")
    parser.add_argument("--max-cohort-jobs", type=int, default=2, metavar="N",
                        help="cohort jobs running at once; more are answered 429 (default: 2)")
    parser.add_argument("--max-concurrent-requests", type=int, default=16, metavar="N",
                        help="uploads scored at once per ingress replica (default: 16)")
    parser.add_argument("--max-waiting-requests", type=int, default=32, metavar="N",
                        help="uploads that may wait for a slot per ingress replica; more are answered "
                             "503 with Retry-After (default: 32)")
    parser.add_argument("--max-queued-requests", type=int, default=32, metavar="N",
                        help="requests the HTTP proxy holds while the ingress is full, -1 for no limit; "
                             "more are answered 503 (default: 32)")
    parser.add_argument("--retry-after", type=float, default=5.0, metavar="SECONDS",
                        help="Retry-After of a 503 answer (default: 5)")
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda (default: auto)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="arithmetic of the model (default: auto)")
    parser.add_argument("--domain-shift", action="append", default=[], metavar="KEY=VALUE",
                        help="threshold of the domain-shift check of every night, repeatable "
                             "(as for somnray score; docs/domain-shift.md)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """Deploy the app and block until interrupted.  Returns 0 once stopped."""
    import signal
    import time

    from somnray.core.errors import ConfigError
    from somnray.scoring.bundles import bundle_location
    from somnray.scoring.domain import DomainThresholds
    from somnray.serve.config import ServeConfig

    config = ServeConfig.from_mapping({
        "run_uri": args.run_uri, "host": args.host, "port": args.port,
        "max_upload_bytes": int(args.max_upload_mb * 1024 * 1024),
        "token_env": args.token_env, "storage_roots": tuple(args.storage_roots),
        "review_roots": tuple(args.review_roots),
        "default_profile": args.profile, "model_replicas": args.replicas,
        "preprocess_replicas": args.replicas, "max_batch_windows": args.max_batch_windows,
        "model_num_cpus": args.model_cpus, "model_threads": args.model_threads,
        "preprocess_num_cpus": args.preprocess_cpus,
        "ingress_num_cpus": args.ingress_cpus, "cohort_num_cpus": args.cohort_cpus,
        "max_cohort_jobs": args.max_cohort_jobs, "max_concurrent_requests": args.max_concurrent_requests,
        "max_waiting_requests": args.max_waiting_requests,
        "ingress_max_queued_requests": args.max_queued_requests, "retry_after_s": args.retry_after,
        "device": args.device, "precision": args.precision,
        "domain_shift": DomainThresholds.parse(args.domain_shift).to_dict(),
    }, source="command-line options")
    if args.profile is not None:
        from somnray.data.profiles import list_profiles

        if args.profile not in list_profiles():
            raise ConfigError("--profile", [f"{args.profile!r} is not a shipped profile ({list_profiles()})"])
    # Fail here, in a second, rather than after replicas retried loading a missing bundle.
    bundle_location(config.run_uri)
    token = config.resolved_token()
    if token is None and not _is_loopback(config.host):
        print(f"somnray serve: warning: listening on {config.host} without a token; set "
              f"{config.token_env} to require 'Authorization: Bearer <token>'", file=sys.stderr)

    from ray import serve

    from somnray.core.session import ensure_ray, shutdown_ray
    from somnray.serve.app import build_app

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    started_ray = ensure_ray()
    # Ctrl-C and a service manager's SIGTERM both end in the orderly shutdown below (a process
    # started in the background by a non-interactive shell inherits SIGINT ignored).  Set after
    # Ray starts: it replaces the SIGTERM handler.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(build_app(config), name="somnray", route_prefix="/")
        shown = f"[{config.host}]" if ":" in config.host else config.host
        url = f"http://{shown}:{config.port}"
        print(f"somnray serve: scoring with {config.run_uri} at {url}  "
              f"(POST {url}/v1/score, docs {url}/docs; "
              f"{'bearer token required' if token else 'no authentication'}); Ctrl-C to stop",
              flush=True)
        if config.review_roots:
            # Never the token itself: this line may end up in a service manager's log.
            how = (f"open {url}/review#token=<the token>, or paste the token in the page" if token
                   else "no token needed")
            print(f"somnray serve: review page at {url}/review ({how})", flush=True)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("somnray serve: stopping", file=sys.stderr)
        return 0
    finally:
        try:
            serve.shutdown()
        finally:
            if started_ray:
                shutdown_ray()
