"""jaxmix: mixture models fitted by expectation-maximization in JAX."""

import importlib
from typing import TYPE_CHECKING

from jaxmix import _cache as _cache
from jaxmix import families as families
from jaxmix.engine.em import CONVERGED as CONVERGED
from jaxmix.engine.em import MAX_ITER as MAX_ITER
from jaxmix.engine.em import NONFINITE as NONFINITE
from jaxmix.engine.em import FitResult as FitResult
from jaxmix.engine.em import e_step as e_step
from jaxmix.engine.em import fit as fit
from jaxmix.engine.em import m_step as m_step
from jaxmix.engine.initialization import initialize as initialize
from jaxmix.engine.initialization import kmeans_plusplus as kmeans_plusplus

__version__ = "0.1.0"
from jaxmix import check as check
from jaxmix import lowrank as lowrank
from jaxmix import mixture as mixture
from jaxmix.engine import batch as batch
from jaxmix.engine import distributed as distributed
from jaxmix.engine.batch import BatchResult as BatchResult
from jaxmix.engine.batch import ModelSelection as ModelSelection
from jaxmix.engine.batch import RestartsResult as RestartsResult
from jaxmix.engine.batch import fit_many as fit_many
from jaxmix.engine.batch import fit_restarts as fit_restarts
from jaxmix.engine.batch import pad_datasets as pad_datasets
from jaxmix.engine.batch import select_n_components as select_n_components
from jaxmix.engine.gradient import fit_gradient as fit_gradient
from jaxmix.engine.online import OnlineState as OnlineState
from jaxmix.engine.online import fit_online as fit_online
from jaxmix.engine.online import init_online as init_online
from jaxmix.engine.online import online_step as online_step
from jaxmix.engine.stream import fit_stream as fit_stream

# Compiled programs are kept on disk for the next process (see jaxmix._cache).
_cache.configure()

# The estimators import scikit-learn when it is installed, which takes longer
# than importing the rest of jaxmix: they are imported when first used.
_LAZY = {
    "BernoulliMixture": "jaxmix.estimators.bernoulli_mixture",
    "CategoricalMixture": "jaxmix.estimators.categorical_mixture",
    "FactorMixture": "jaxmix.estimators.factor_mixture",
    "GammaMixture": "jaxmix.estimators.gamma_mixture",
    "GaussianMixture": "jaxmix.estimators.gaussian_mixture",
    "KMeans": "jaxmix.estimators.kmeans",
    "KMedians": "jaxmix.estimators.kmeans",
    "PoissonMixture": "jaxmix.estimators.poisson_mixture",
    "StudentMixture": "jaxmix.estimators.student_mixture",
    "VonMisesFisherMixture": "jaxmix.estimators.von_mises_fisher_mixture",
    "ConvergenceWarning": "jaxmix.estimators.validation",
    "NotFittedError": "jaxmix.estimators.validation",
}

if TYPE_CHECKING:
    from jaxmix.estimators.bernoulli_mixture import BernoulliMixture as BernoulliMixture
    from jaxmix.estimators.categorical_mixture import (
        CategoricalMixture as CategoricalMixture,
    )
    from jaxmix.estimators.factor_mixture import FactorMixture as FactorMixture
    from jaxmix.estimators.gamma_mixture import GammaMixture as GammaMixture
    from jaxmix.estimators.gaussian_mixture import GaussianMixture as GaussianMixture
    from jaxmix.estimators.kmeans import KMeans as KMeans
    from jaxmix.estimators.kmeans import KMedians as KMedians
    from jaxmix.estimators.poisson_mixture import PoissonMixture as PoissonMixture
    from jaxmix.estimators.student_mixture import StudentMixture as StudentMixture
    from jaxmix.estimators.validation import ConvergenceWarning as ConvergenceWarning
    from jaxmix.estimators.validation import NotFittedError as NotFittedError
    from jaxmix.estimators.von_mises_fisher_mixture import (
        VonMisesFisherMixture as VonMisesFisherMixture,
    )


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'jaxmix' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
