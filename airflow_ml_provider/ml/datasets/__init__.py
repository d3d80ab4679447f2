"""Synthetic data sets used by the example DAGs, the demo, the tests and the benchmarks.

:data:`SQL_DIR` holds their SQL files (``audio_training.sql``): a DAG passes it as
``template_searchpath`` and names the file, so parsing the DAG does not import the generators.
"""

import os

SQL_DIR = os.path.dirname(os.path.abspath(__file__))
