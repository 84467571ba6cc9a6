"""Root of the learning package's exceptions: one subclass per failure."""


class LearningError(Exception):
    """Base class for errors raised by swarmnode.learning."""


class DatasetNotFound(LearningError):
    """No copy of a dataset was found in any of the places searched."""


class DatasetCorrupt(LearningError):
    """A dataset file is not what it claims to be (bad IDX header, wrong size, labels out of range); the
    message names the file and what is wrong."""


class UnknownName(LearningError):
    """A dataset, model, partitioner or optimizer name that does not exist."""


class PartitionError(LearningError):
    """A partition cannot be built from the given labels and parameters."""


class DataSchemaError(LearningError):
    """The genesis [task.data] table is malformed; the message names the key (`task.data.mean: ...`)."""


class DataMismatch(LearningError):
    """A node's local data does not fit the task's schema; the message names the file, row and column."""


class MissingDependency(LearningError):
    """An optional package needed for this input (pyarrow for Parquet) is not installed."""
