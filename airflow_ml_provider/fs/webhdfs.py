"""HDFS for Airflow's ``ObjectStoragePath``: ``webhdfs://<conn_id>@/path``.

The official ``apache-airflow-providers-apache-hdfs`` registers no ``ObjectStoragePath`` filesystem;
this provider does (``filesystems`` in ``get_provider_info``). The Airflow connection ``conn_id`` (type
``webhdfs``: host = NameNode, port = its HTTP port, login = HDFS user, extra ``use_ssl`` /
``use_kerberos``) is turned into fsspec's WebHDFS client::

    from airflow.sdk import ObjectStoragePath

    base = ObjectStoragePath("webhdfs://webhdfs_default@/warehouse/ml")
    (base / "models" / "ctr" / "1" / "manifest.json").read_text()

Without a connection id, ``webhdfs_default`` is used.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.ml.storage import webhdfs_options_from_connection

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

# universal-pathlib warns that it has no dedicated WebHDFS path class; its generic one is what we use.
warnings.filterwarnings("ignore", message="UPath 'webhdfs' filesystem not explicitly implemented")

#: URL schemes served by :func:`get_fs`.
schemes = ["webhdfs"]


def get_fs(conn_id: str | None, storage_options: dict[str, Any] | None = None) -> AbstractFileSystem:
    """Return an fsspec WebHDFS filesystem for the Airflow connection ``conn_id``.

    :param conn_id: Airflow connection id (type ``webhdfs``); ``webhdfs_default`` when empty.
    :param storage_options: extra keyword arguments for ``fsspec.implementations.webhdfs.WebHDFS``.
    """
    from fsspec.implementations.webhdfs import WebHDFS

    options = webhdfs_options_from_connection(conn_id or "webhdfs_default")
    options.update(storage_options or {})
    return WebHDFS(**options)
