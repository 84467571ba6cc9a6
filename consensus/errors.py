"""Root of the consensus package's exception hierarchy: one subclass per failure."""


class ConsensusError(Exception):
    """Base class for every error raised by the `consensus` package."""


class InvalidSignature(ConsensusError):
    """A signature is malformed or does not recover to the expected signer."""
