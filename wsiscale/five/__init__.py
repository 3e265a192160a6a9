"""FiVE: fine-grained visual-semantic interaction for slide classification (Li et al., CVPR 2024).

Reports become fine-grained fields (:mod:`wsiscale.five.extract`), fields become text features
(:mod:`wsiscale.five.text`), tile embeddings become field-wise slide features through the TFS module
(:mod:`wsiscale.five.model`), matched by scaled cosine similarity (:mod:`wsiscale.five.losses`).
"""
