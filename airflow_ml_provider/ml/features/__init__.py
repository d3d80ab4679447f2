"""The train/serve feature library (pure Python, no Airflow import)."""
