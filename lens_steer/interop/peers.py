"""A lens_steer vector as the objects steering-vectors and repeng users work with (their packages are
imported only here, only when called; neither is a dependency of lens_steer)."""

from __future__ import annotations

from collections.abc import Sequence

from lens_steer.interop.export import scaled_directions

__all__ = ["to_repeng", "to_steering_vectors"]


def to_steering_vectors(vector, *, layers: Sequence[int] | None = None, coeff: float = 1.0):
    """A ``steering_vectors.SteeringVector`` (``layer_type="decoder_block"``) whose ``apply(model)`` adds
    ``coeff·v_l`` at each layer, as lens_steer's continuous ``steer`` does."""
    from steering_vectors import SteeringVector as PeerVector

    return PeerVector(layer_activations=scaled_directions(vector, "steering-vectors", layers, coeff)[0], layer_type="decoder_block")


def to_repeng(vector, *, layers: Sequence[int] | None = None, coeff: float = 1.0, model_type: str | None = None):
    """A ``repeng.ControlVector``; ``ControlModel(model, layers).set_control(cv, 1.0)`` adds ``coeff·v_l``
    at each layer's output. ``model_type`` defaults to the vector's model id (repeng keeps it as a hint)."""
    from repeng import ControlVector

    dirs = {layer: d.numpy() for layer, d in scaled_directions(vector, "steering-vectors", layers, coeff)[0].items()}
    return ControlVector(model_type=model_type or vector.metadata.model_id, directions=dirs)
