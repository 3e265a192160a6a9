"""`ray job submit` entrypoint for the end-to-end demo (runs on the cluster the job is submitted to).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/demo.py --config jobs/configs/demo.yaml --out /tmp/wsiscale-demo

Inside a Ray job the driver joins the running cluster (``ray.address=auto``).
"""

from __future__ import annotations

import sys

import wsiscale  # noqa: F401  (cuCIM before torch)
from wsiscale.cli import main

if __name__ == "__main__":
    argv = ["demo", *sys.argv[1:]]
    if not any(a.startswith("ray.address") for a in argv):
        argv += ["--set", "ray.address=auto"]
    sys.exit(main(argv))
