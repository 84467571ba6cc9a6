"""Root of the learning package's exceptions: one subclass per failure."""


class LearningError(Exception):
    """Base class for errors raised by swarmnode.learning."""


class DatasetNotFound(LearningError):
    """No copy of a dataset was found in any of the places searched."""


class UnknownName(LearningError):
    """A dataset, model, partitioner or optimizer name that does not exist."""


class PartitionError(LearningError):
    """A partition cannot be built from the given labels and parameters."""
