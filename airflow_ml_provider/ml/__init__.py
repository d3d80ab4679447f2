"""The pure core of airflow-ml-provider.

Nothing under ``airflow_ml_provider.ml`` imports Airflow, so the online model service and the
``airflow-ml`` command line can use it directly. Heavy ML libraries (xgboost, tensorflow, gensim,
sklearn) are imported lazily, inside the functions that need them.
"""
