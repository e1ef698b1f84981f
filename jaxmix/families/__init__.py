"""Model families: params pytrees, log densities, statistics and M-steps."""

from jaxmix.families.bernoulli import Bernoulli as Bernoulli
from jaxmix.families.bernoulli import BernoulliParams as BernoulliParams
from jaxmix.families.bernoulli import BernoulliStats as BernoulliStats
from jaxmix.families.categorical import Categorical as Categorical
from jaxmix.families.factor import FactorAnalyzer as FactorAnalyzer
from jaxmix.families.factor import FactorParams as FactorParams
from jaxmix.families.factor import FactorStats as FactorStats
from jaxmix.families.gamma import Gamma as Gamma
from jaxmix.families.gamma import GammaParams as GammaParams
from jaxmix.families.gaussian import Gaussian as Gaussian
from jaxmix.families.gaussian import GaussianParams as GaussianParams
from jaxmix.families.gaussian import GaussianStats as GaussianStats
from jaxmix.families.isotropic import IsotropicGaussian as IsotropicGaussian
from jaxmix.families.laplace import Laplace as Laplace
from jaxmix.families.laplace import LaplaceParams as LaplaceParams
from jaxmix.families.poisson import Poisson as Poisson
from jaxmix.families.poisson import PoissonParams as PoissonParams
from jaxmix.families.poisson import PoissonStats as PoissonStats
from jaxmix.families.student import StudentT as StudentT
from jaxmix.families.student import StudentTParams as StudentTParams
from jaxmix.families.student import StudentTStats as StudentTStats
from jaxmix.families.von_mises_fisher import VonMisesFisher as VonMisesFisher
from jaxmix.families.von_mises_fisher import (
    VonMisesFisherParams as VonMisesFisherParams,
)
from jaxmix.families.von_mises_fisher import (
    VonMisesFisherStats as VonMisesFisherStats,
)
