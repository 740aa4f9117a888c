"""The node's error types: an invalid parameter value, and a node that cannot start."""


class ParameterError(ValueError):
    """A parameter value is invalid; the message names the parameter, the rule and the value."""


class NodeStartupError(RuntimeError):
    """The node cannot start (bad parameter, model file or backend); the message is the one fatal log line."""
