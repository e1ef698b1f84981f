"""jaxmix: mixture models fitted by expectation-maximization in JAX."""

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
from jaxmix.engine.batch import BatchResult as BatchResult
from jaxmix.engine.batch import ModelSelection as ModelSelection
from jaxmix.engine.batch import RestartsResult as RestartsResult
from jaxmix.engine.batch import fit_many as fit_many
from jaxmix.engine.batch import fit_restarts as fit_restarts
from jaxmix.engine.batch import pad_datasets as pad_datasets
from jaxmix.engine.batch import select_n_components as select_n_components
from jaxmix.engine.gradient import fit_gradient as fit_gradient
from jaxmix.estimators.bernoulli_mixture import BernoulliMixture as BernoulliMixture
from jaxmix.estimators.gaussian_mixture import GaussianMixture as GaussianMixture
from jaxmix.estimators.kmeans import KMeans as KMeans
from jaxmix.estimators.kmeans import KMedians as KMedians
from jaxmix.estimators.validation import ConvergenceWarning as ConvergenceWarning
from jaxmix.estimators.validation import NotFittedError as NotFittedError
