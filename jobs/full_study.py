"""The whole study as one Ray job: `ray job submit --working-dir . -- python jobs/full_study.py`.

Thin on purpose: the logic lives in mammo_ray.study. Options: --config YAML, --output URI, --stages ...
"""

import sys

from mammo_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
