"""scikit-learn-style estimators built on the engine."""

from jaxmix.estimators.base import bic_scorer as bic_scorer
