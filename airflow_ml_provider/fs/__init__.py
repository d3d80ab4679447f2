"""Airflow ``ObjectStoragePath`` filesystems added by this provider (listed in ``get_provider_info``)."""
