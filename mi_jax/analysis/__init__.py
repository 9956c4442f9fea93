"""Analyses of trained targets: Fisher-information layer importance (TL-DMI).

See :mod:`mi_jax.analysis.fisher` for the definitions.
"""

from mi_jax.analysis.fisher import (
    class_centroids,
    classification_loss,
    empirical_fisher,
    forward_layer_order,
    inversion_loss,
    inversion_preference,
    layer_fisher,
    layer_importance,
    layer_name,
    layer_sizes,
    leaf_layers,
    model_layer_order,
    rank_for_freezing,
    squared_gradient_sum,
)

__all__ = [
    'class_centroids', 'classification_loss', 'empirical_fisher', 'forward_layer_order',
    'inversion_loss', 'inversion_preference', 'layer_fisher', 'layer_importance', 'layer_name',
    'layer_sizes', 'leaf_layers', 'model_layer_order', 'rank_for_freezing', 'squared_gradient_sum',
]
