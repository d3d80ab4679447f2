"""``python -m airflow_ml_provider.cli``."""

import sys

from airflow_ml_provider.cli import main

sys.exit(main())
