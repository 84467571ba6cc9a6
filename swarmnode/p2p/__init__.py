"""swarmnode.p2p: libp2p host (TCP + Noise + yamux, secp256k1 identity), handshake, gossip topics with
validators, blob exchange, chain sync, peer exchange, and the consensus driver's Network over direct
streams (or, for comparison, over gossip).

Entry point: `P2PNode(P2PConfig(...)).run()`; see README.md in this directory.
"""

from swarmnode.p2p.appguard import SerializedApplication
from swarmnode.p2p.blobstore import BlobStore, DirectoryBlobStore, MemoryBlobStore, content_id
from swarmnode.p2p.config import P2PConfig
from swarmnode.p2p.consensus_net import ConsensusNetwork, height_window
from swarmnode.p2p.direct import DirectConsensusNetwork
from swarmnode.p2p.errors import P2PError
from swarmnode.p2p.identity import address_of_peer, peer_id_of
from swarmnode.p2p.node import P2PNode
from swarmnode.p2p.topics import CONSENSUS, TX, UPDATES, Announcement, GossipMessage, TopicPolicy

__all__ = [
    "CONSENSUS", "TX", "UPDATES", "Announcement", "BlobStore", "ConsensusNetwork", "DirectConsensusNetwork",
    "DirectoryBlobStore",
    "GossipMessage", "MemoryBlobStore", "P2PConfig", "P2PError", "P2PNode", "SerializedApplication",
    "TopicPolicy", "address_of_peer", "content_id", "height_window", "peer_id_of",
]
