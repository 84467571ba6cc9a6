"""Root of the aggregation package's exceptions: one subclass per failure, messages name the values."""


class AggregationError(Exception):
    """Base class for errors raised by swarmnode.aggregation."""


class MalformedBlob(AggregationError):
    """Bytes that are not a canonical model or update encoding."""


class UpdateRejected(AggregationError):
    """An update that decodes but may not be aggregated; `reason` is a short machine-readable tag."""

    reason = "rejected"


class WrongTensorName(UpdateRejected):
    reason = "wrong-tensor-name"


class WrongShape(UpdateRejected):
    reason = "wrong-shape"


class WrongDtype(UpdateRejected):
    reason = "wrong-dtype"


class NonFiniteValue(UpdateRejected):
    reason = "non-finite"


class NormTooLarge(UpdateRejected):
    reason = "norm-too-large"


class UnknownRule(AggregationError):
    """An aggregation rule name or parameter that does not exist."""
