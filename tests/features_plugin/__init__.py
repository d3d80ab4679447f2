"""A tiny custom-transformer package used by the feature-library tests.

Referenced from specs by dotted path (``tests.features_plugin:Winsorize``) or registered under the
entry-point group ``airflow_ml_provider.transformers`` by a test-made ``.dist-info`` directory.
"""

from __future__ import annotations

import numpy as np

from airflow_ml_provider.ml.features import KeyTransformer, NumericTransformer, Option


class Winsorize(NumericTransformer):
    """Clip to fitted quantiles (a stateful numeric transformer)."""

    name = "winsorize"
    version = 1
    description = "clip to the fitted [lower, upper] quantiles"
    options = {  # noqa: RUF012
        "lower": Option("number", default=0.05),
        "upper": Option("number", default=0.95),
    }

    def check(self):
        self._lo = self._hi = None

    def fit(self, x):
        f = x[np.isfinite(x)]
        self._lo = float(np.quantile(f, self.opts["lower"]))
        self._hi = float(np.quantile(f, self.opts["upper"]))

    def get_state(self):
        return {"lo": self._lo, "hi": self._hi}

    def set_state(self, state):
        self._lo, self._hi = state["lo"], state["hi"]

    def transform_batch(self, x):
        return np.where(x < self._lo, self._lo, np.where(x > self._hi, self._hi, x))

    def transform_value(self, x):
        return self._lo if x < self._lo else (self._hi if x > self._hi else x)  # noqa: FURB136


class Reverse(KeyTransformer):
    """Reverse a category's text (a stateless categorical transformer)."""

    name = "reverse"
    version = 3
    description = "reverse the text of a category"

    def map_key(self, key):
        return key[::-1] if key is not None else None
