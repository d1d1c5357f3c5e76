"""Score a collection with a model package as one Ray job:
`ray job submit --working-dir . -- python jobs/score.py s3://bucket/studies/x/models/<name> --config score.yaml`.

Thin on purpose: the logic lives in mammo_ray.scoring. Options: --config YAML, --output URI, --weights URI.
"""

import sys

from mammo_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
