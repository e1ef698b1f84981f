"""jaxmix: mixture models fitted by expectation-maximization in JAX."""

from jaxmix import families as families
from jaxmix.em import CONVERGED as CONVERGED
from jaxmix.em import MAX_ITER as MAX_ITER
from jaxmix.em import NONFINITE as NONFINITE
from jaxmix.em import FitResult as FitResult
from jaxmix.em import e_step as e_step
from jaxmix.em import fit as fit
from jaxmix.em import m_step as m_step
from jaxmix.initialization import initialize as initialize
from jaxmix.initialization import kmeans_plusplus as kmeans_plusplus

__version__ = "0.1.0"
from jaxmix import batch as batch
from jaxmix import check as check
from jaxmix import lowrank as lowrank
from jaxmix import mixture as mixture
from jaxmix._validation import ConvergenceWarning as ConvergenceWarning
from jaxmix._validation import NotFittedError as NotFittedError
from jaxmix.batch import BatchResult as BatchResult
from jaxmix.batch import ModelSelection as ModelSelection
from jaxmix.batch import RestartsResult as RestartsResult
from jaxmix.batch import fit_many as fit_many
from jaxmix.batch import fit_restarts as fit_restarts
from jaxmix.batch import pad_datasets as pad_datasets
from jaxmix.batch import select_n_components as select_n_components
from jaxmix.bernoulli_mixture import BernoulliMixture as BernoulliMixture
from jaxmix.gaussian_mixture import GaussianMixture as GaussianMixture
from jaxmix.gradient import fit_gradient as fit_gradient
from jaxmix.kmeans import KMeans as KMeans
from jaxmix.kmeans import KMedians as KMedians
