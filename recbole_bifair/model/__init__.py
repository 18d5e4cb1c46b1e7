"""Plugin models; importing this package registers them (see recbole_bifair.registry)."""

from recbole_bifair.model.alpharec import AlphaRec
from recbole_bifair.model.llm_base import LLMRecommender
from recbole_bifair.model.llm_linear import LLMLinear
from recbole_bifair.model.xsimgcl import XSimGCL

__all__ = ["AlphaRec", "LLMLinear", "LLMRecommender", "XSimGCL"]
