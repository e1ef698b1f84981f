"""Model families: params pytrees, log densities, statistics and M-steps."""

from jaxmix.families.gaussian import Gaussian as Gaussian
from jaxmix.families.gaussian import GaussianParams as GaussianParams
from jaxmix.families.gaussian import GaussianStats as GaussianStats
