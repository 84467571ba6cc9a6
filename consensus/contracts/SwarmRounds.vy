# pragma version ~=0.4.3
"""
@title SwarmRounds: participant registry, per-round update commits, aggregate attestations, rewards
@notice Round 0 opens at deployment (genesis); round r+1 opens in the block where round r finalizes.
        Commits are accepted while block.number < closeBlock (= openBlock + commitWindow), or until
        every registered participant has committed (the window then closes early, closeBlock = that
        block). Validators (per Staking) attest once block.number >= closeBlock. A round finalizes when
        the stake that attested one hash is more than 2/3 of Staking.totalStake().
        Fixed point: localLoss and localAccuracy are value * 1e6; accuracy must be <= 1e6.
        Rewards: rewardPerRound * contributorShareBps / 10000 goes to contributors by sample count
        (nothing when the round has no commits), the rest to the validators that attested the final
        hash, by attested stake. Validators that attested another hash get nothing and lose
        mismatchPenaltyBps of their stake. Integer-division dust stays in the Staking reward pool.
"""

MAX_PARTICIPANTS: constant(uint256) = 128
MAX_ATTESTATIONS: constant(uint256) = 128
MAX_PEER_ID: constant(uint256) = 64
BPS: constant(uint256) = 10000
FIXED_ONE: constant(uint256) = 1000000

interface IStaking:
    def stakeOf(account: address) -> uint256: view
    def totalStake() -> uint256: view
    def creditReward(account: address, amount: uint256) -> uint256: nonpayable
    def penalize(validator: address, bps: uint256) -> uint256: nonpayable

struct RoundInfo:
    openBlock: uint256
    closeBlock: uint256
    finalBlock: uint256
    finalHash: bytes32
    commitCount: uint256
    totalSamples: uint256
    attestationCount: uint256
    participantCount: uint256
    closedEarly: bool
    finalized: bool

struct Commit:
    participant: address
    updateHash: bytes32
    numSamples: uint256
    localLoss: uint256
    localAccuracy: uint256
    blockNumber: uint256

struct Attestation:
    validator: address
    modelHash: bytes32
    stake: uint256
    blockNumber: uint256

event Registered:
    participant: indexed(address)
    peerId: String[MAX_PEER_ID]

event RoundOpened:
    round: indexed(uint256)
    openBlock: uint256
    closeBlock: uint256

event UpdateCommitted:
    round: indexed(uint256)
    participant: indexed(address)
    index: uint256
    updateHash: bytes32
    numSamples: uint256
    localLoss: uint256
    localAccuracy: uint256

event WindowClosedEarly:
    round: indexed(uint256)
    closeBlock: uint256
    commitCount: uint256

event AggregateAttested:
    round: indexed(uint256)
    validator: indexed(address)
    modelHash: bytes32
    stake: uint256

event RoundFinalized:
    round: indexed(uint256)
    modelHash: bytes32
    finalBlock: uint256
    commitCount: uint256
    attestedStake: uint256

event ContributorRewarded:
    round: indexed(uint256)
    participant: indexed(address)
    amount: uint256

event ValidatorRewarded:
    round: indexed(uint256)
    validator: indexed(address)
    amount: uint256

event AttestationMismatch:
    round: indexed(uint256)
    validator: indexed(address)
    attestedHash: bytes32
    finalHash: bytes32
    penalty: uint256

staking: public(address)
commitWindow: public(uint256)
rewardPerRound: public(uint256)
contributorShareBps: public(uint256)
mismatchPenaltyBps: public(uint256)

currentRound: public(uint256)
rounds: HashMap[uint256, RoundInfo]
commits: HashMap[uint256, HashMap[uint256, Commit]]
committed: HashMap[uint256, HashMap[address, bool]]
attestations: HashMap[uint256, HashMap[uint256, Attestation]]
attestedHash: HashMap[uint256, HashMap[address, bytes32]]
attestedStake: public(HashMap[uint256, HashMap[bytes32, uint256]])
mismatched: HashMap[uint256, HashMap[address, bool]]
roundReward: public(HashMap[uint256, HashMap[address, uint256]])

peerIdOf: public(HashMap[address, String[MAX_PEER_ID]])
peerIdOwner: public(HashMap[bytes32, address])  # keccak256(peerId) -> participant
participants: DynArray[address, MAX_PARTICIPANTS]


@deploy
def __init__(
    staking: address,
    commitWindow: uint256,
    rewardPerRound: uint256,
    contributorShareBps: uint256,
    mismatchPenaltyBps: uint256,
    initialParticipants: DynArray[address, MAX_PARTICIPANTS],
    initialPeerIds: DynArray[String[MAX_PEER_ID], MAX_PARTICIPANTS],
):
    assert staking != empty(address), "init: zero Staking address"
    assert commitWindow > 0, "init: zero commit window"
    assert contributorShareBps <= BPS, "init: contributor share above 10000 bps"
    assert mismatchPenaltyBps <= BPS, "init: mismatch penalty above 10000 bps"
    assert len(initialParticipants) == len(initialPeerIds), "init: participants and peer ids differ in length"
    self.staking = staking
    self.commitWindow = commitWindow
    self.rewardPerRound = rewardPerRound
    self.contributorShareBps = contributorShareBps
    self.mismatchPenaltyBps = mismatchPenaltyBps
    for i: uint256 in range(len(initialParticipants), bound=MAX_PARTICIPANTS):
        self._register(initialParticipants[i], initialPeerIds[i])
    self._openRound(0)


# ---------------------------------------------------------------- internal

@internal
def _register(participant: address, peerId: String[MAX_PEER_ID]):
    assert len(peerId) > 0, "register: empty peer id"
    assert len(self.peerIdOf[participant]) == 0, "register: already registered"
    key: bytes32 = keccak256(peerId)
    assert self.peerIdOwner[key] == empty(address), "register: peer id already taken"
    assert len(self.participants) < MAX_PARTICIPANTS, "register: participant registry full"
    self.peerIdOf[participant] = peerId
    self.peerIdOwner[key] = participant
    self.participants.append(participant)
    log Registered(participant=participant, peerId=peerId)


@internal
def _openRound(r: uint256):
    closeBlock: uint256 = block.number + self.commitWindow
    self.currentRound = r
    self.rounds[r].openBlock = block.number
    self.rounds[r].closeBlock = closeBlock
    self.rounds[r].participantCount = len(self.participants)
    log RoundOpened(round=r, openBlock=block.number, closeBlock=closeBlock)


@internal
@view
def _windowOpen(r: uint256) -> bool:
    return not self.rounds[r].closedEarly and block.number < self.rounds[r].closeBlock


@internal
def _payContributors(r: uint256, pool: uint256):
    info: RoundInfo = self.rounds[r]
    for i: uint256 in range(info.commitCount, bound=MAX_PARTICIPANTS):
        c: Commit = self.commits[r][i]
        amount: uint256 = pool * c.numSamples // info.totalSamples
        paid: uint256 = extcall IStaking(self.staking).creditReward(c.participant, amount)
        self.roundReward[r][c.participant] += paid
        log ContributorRewarded(round=r, participant=c.participant, amount=paid)


@internal
def _settleValidators(r: uint256, finalHash: bytes32, pool: uint256):
    """Reward the attesters of `finalHash` by stake; record and penalize the others."""
    info: RoundInfo = self.rounds[r]
    winningStake: uint256 = self.attestedStake[r][finalHash]
    penaltyBps: uint256 = self.mismatchPenaltyBps
    for i: uint256 in range(info.attestationCount, bound=MAX_ATTESTATIONS):
        a: Attestation = self.attestations[r][i]
        if a.modelHash == finalHash:
            amount: uint256 = pool * a.stake // winningStake
            paid: uint256 = extcall IStaking(self.staking).creditReward(a.validator, amount)
            self.roundReward[r][a.validator] += paid
            log ValidatorRewarded(round=r, validator=a.validator, amount=paid)
        else:
            self.mismatched[r][a.validator] = True
            penalty: uint256 = extcall IStaking(self.staking).penalize(a.validator, penaltyBps)
            log AttestationMismatch(round=r, validator=a.validator, attestedHash=a.modelHash, finalHash=finalHash, penalty=penalty)


@internal
def _finalize(r: uint256, modelHash: bytes32):
    self.rounds[r].finalized = True
    self.rounds[r].finalHash = modelHash
    self.rounds[r].finalBlock = block.number
    total: uint256 = self.rewardPerRound
    contributorPool: uint256 = 0
    if self.rounds[r].commitCount > 0:
        contributorPool = total * self.contributorShareBps // BPS
        self._payContributors(r, contributorPool)
    self._settleValidators(r, modelHash, total - contributorPool)
    log RoundFinalized(round=r, modelHash=modelHash, finalBlock=block.number, commitCount=self.rounds[r].commitCount, attestedStake=self.attestedStake[r][modelHash])
    self._openRound(r + 1)


# ---------------------------------------------------------------- participants

@external
def register(peerId: String[MAX_PEER_ID]):
    """Register the sender as a learning participant under its libp2p peer id."""
    self._register(msg.sender, peerId)


@external
@view
def isRegistered(account: address) -> bool:
    return len(self.peerIdOf[account]) > 0


@external
@view
def participantCount() -> uint256:
    return len(self.participants)


@external
@view
def getParticipants() -> DynArray[address, MAX_PARTICIPANTS]:
    return self.participants


@external
@view
def participantAt(index: uint256) -> address:
    assert index < len(self.participants), "participantAt: index out of range"
    return self.participants[index]


# ---------------------------------------------------------------- commits

@external
def commitUpdate(round: uint256, updateHash: bytes32, numSamples: uint256, localLoss: uint256, localAccuracy: uint256):
    """Commit the hash of the sender's update for the current round, once, inside the window."""
    assert len(self.peerIdOf[msg.sender]) > 0, "commitUpdate: sender not registered"
    assert round == self.currentRound, "commitUpdate: wrong round"
    assert self._windowOpen(round), "commitUpdate: commit window closed"
    assert not self.committed[round][msg.sender], "commitUpdate: already committed this round"
    assert updateHash != empty(bytes32), "commitUpdate: empty update hash"
    assert numSamples > 0, "commitUpdate: zero samples"
    assert localAccuracy <= FIXED_ONE, "commitUpdate: accuracy above 1e6"
    index: uint256 = self.rounds[round].commitCount
    self.commits[round][index] = Commit(
        participant=msg.sender,
        updateHash=updateHash,
        numSamples=numSamples,
        localLoss=localLoss,
        localAccuracy=localAccuracy,
        blockNumber=block.number,
    )
    self.committed[round][msg.sender] = True
    self.rounds[round].commitCount = index + 1
    self.rounds[round].totalSamples += numSamples
    log UpdateCommitted(round=round, participant=msg.sender, index=index, updateHash=updateHash, numSamples=numSamples, localLoss=localLoss, localAccuracy=localAccuracy)
    if index + 1 >= len(self.participants):
        self.rounds[round].closedEarly = True
        self.rounds[round].closeBlock = block.number
        log WindowClosedEarly(round=round, closeBlock=block.number, commitCount=index + 1)


# ---------------------------------------------------------------- attestations

@external
def attestAggregate(round: uint256, modelHash: bytes32) -> bool:
    """A validator attests the aggregate of the closed round; returns True when this finalized it."""
    stake: uint256 = staticcall IStaking(self.staking).stakeOf(msg.sender)
    assert stake > 0, "attestAggregate: sender is not a validator"
    assert round <= self.currentRound, "attestAggregate: round not open yet"
    assert round == self.currentRound, "attestAggregate: round already finalized"
    assert not self._windowOpen(round), "attestAggregate: commit window still open"
    assert modelHash != empty(bytes32), "attestAggregate: empty model hash"
    assert self.attestedHash[round][msg.sender] == empty(bytes32), "attestAggregate: already attested this round"
    index: uint256 = self.rounds[round].attestationCount
    assert index < MAX_ATTESTATIONS, "attestAggregate: too many attestations"
    self.attestations[round][index] = Attestation(validator=msg.sender, modelHash=modelHash, stake=stake, blockNumber=block.number)
    self.attestedHash[round][msg.sender] = modelHash
    self.rounds[round].attestationCount = index + 1
    self.attestedStake[round][modelHash] += stake
    log AggregateAttested(round=round, validator=msg.sender, modelHash=modelHash, stake=stake)
    total: uint256 = staticcall IStaking(self.staking).totalStake()
    if self.attestedStake[round][modelHash] * 3 > total * 2:
        self._finalize(round, modelHash)
        return True
    return False


# ---------------------------------------------------------------- history

@external
@view
def getRound(round: uint256) -> RoundInfo:
    assert round <= self.currentRound, "getRound: round not open yet"
    return self.rounds[round]


@external
@view
def getCommit(round: uint256, index: uint256) -> Commit:
    assert index < self.rounds[round].commitCount, "getCommit: no such commit"
    return self.commits[round][index]


@external
@view
def getCommitters(round: uint256) -> DynArray[address, MAX_PARTICIPANTS]:
    """The participants whose updates round `round` includes, in commit order."""
    out: DynArray[address, MAX_PARTICIPANTS] = []
    for i: uint256 in range(self.rounds[round].commitCount, bound=MAX_PARTICIPANTS):
        out.append(self.commits[round][i].participant)
    return out


@external
@view
def hasCommitted(round: uint256, participant: address) -> bool:
    return self.committed[round][participant]


@external
@view
def getAttestation(round: uint256, index: uint256) -> Attestation:
    assert index < self.rounds[round].attestationCount, "getAttestation: no such attestation"
    return self.attestations[round][index]


@external
@view
def attestationOf(round: uint256, validator: address) -> bytes32:
    return self.attestedHash[round][validator]


@external
@view
def isMismatched(round: uint256, validator: address) -> bool:
    return self.mismatched[round][validator]


@external
@view
def windowOpen() -> bool:
    return self._windowOpen(self.currentRound)
