"""CCR-1toK: cross-lingual cross-modal retrieval with 1-to-K contrastive learning (Nie et al., KDD 2024)."""

from .configuration_ccr import CCRConfig
from .modeling_ccr import CCRModel, CCROutput, one_to_k_contrastive_loss
from .processing_ccr import CCRProcessor

__all__ = ["CCRConfig", "CCRModel", "CCROutput", "CCRProcessor", "one_to_k_contrastive_loss"]
