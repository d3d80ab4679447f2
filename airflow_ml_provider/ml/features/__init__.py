"""The train/serve feature library (pure Python, no Airflow import).

::

    from airflow_ml_provider.ml.features import FeatureSpec, FittedSpec, fit

    spec = FeatureSpec.from_yaml("features.yaml")
    fitted = fit(spec, train_df)
    fitted.save("fitted.json")

    fitted = FittedSpec.load("fitted.json")
    X = fitted.transform(df)                  # float32 matrix, columns fitted.feature_names
    x = fitted.transform_row({"price": 3.5})  # float32 vector, bit-identical to the batch row

    # Parquet larger than memory: fit from mergeable statistics, transform by row group
    fitted = fit_parquet(spec, "train.parquet")
    transform_parquet(fitted, "test.parquet", "test_features.parquet")

See docs/features.md for the spec format and every transformer.
"""

from .errors import FeatureError, FeatureSpecError, FeatureTypeError, MissingFeatureError
from .fitted import FORMAT_VERSION, FittedSpec, fit, fit_transform
from .registry import ENTRY_POINT_GROUP, available_transformers, get_transformer_class
from .spec import FeatureDef, FeatureSpec
from .streaming import fit_parquet, transform_parquet
from .transformers import KeyTransformer, NumericTransformer, Option, OptionError, Transformer
from .values import stable_hash


def load_fitted(path) -> FittedSpec:
    """Shorthand for :meth:`FittedSpec.load`."""
    return FittedSpec.load(path)


__all__ = [
    "ENTRY_POINT_GROUP",
    "FORMAT_VERSION",
    "FeatureDef",
    "FeatureError",
    "FeatureSpec",
    "FeatureSpecError",
    "FeatureTypeError",
    "FittedSpec",
    "KeyTransformer",
    "MissingFeatureError",
    "NumericTransformer",
    "Option",
    "OptionError",
    "Transformer",
    "available_transformers",
    "fit",
    "fit_parquet",
    "fit_transform",
    "get_transformer_class",
    "load_fitted",
    "stable_hash",
    "transform_parquet",
]
