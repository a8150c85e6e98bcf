"""Serving: an OpenAI-compatible HTTP server where every request may carry its own steering
(``lens-steer serve``). :mod:`~lens_steer.serve.steering_spec` reads steering specs, :mod:`.vectors` the
served vectors, :mod:`.protocol` / :mod:`.responses` the OpenAI bodies, :mod:`.batcher` gathers requests into
engine calls, :mod:`.app` holds the state, :mod:`.http` the standard-library HTTP layer."""

from lens_steer.serve.app import ServeApp, ServeSettings
from lens_steer.serve.http import make_server, serve_in_thread
from lens_steer.serve.steering_spec import SteeringEntry, parse_steering, parse_steering_text
from lens_steer.serve.vectors import ServedVector, load_served_vectors

__all__ = ["ServeApp", "ServeSettings", "ServedVector", "SteeringEntry", "load_served_vectors", "make_server",
           "parse_steering", "parse_steering_text", "serve_in_thread"]
