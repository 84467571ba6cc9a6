# pragma version ~=0.4.3
# pragma optimize codesize
"""
@title SwarmRounds: participant registry, per-round update commits, aggregate attestations, rewards
@notice Time. Every deadline is a block timestamp in seconds, never a block count: an idle chain that
        makes one empty block per 5 s closes a window as soon as one that makes a block per second.
        Rounds. Round 0 opens at deployment (the genesis block); round r+1 opens in the block where
        round r finalizes. A round opens with openTime = block.timestamp, closeTime = openTime +
        commitWindowSecs and baseHash = genesisModelHash (r = 0) or finalHash of r-1.
        Commit window, as seen by the current block: closed once finalized; OPEN while fewer than
        minParticipants committed unless skipUnderMin (the round is extended, whatever the time),
        except under secure aggregation once the round has a commit: that commit froze the key set,
        whose members then have until closeTime (restarted by a late first commit, below); a round still
        below minParticipants then is skipped, so no key poster that stays silent can hold it open;
        else closed if closedEarly; else open iff block.timestamp < closeTime.
        Restart: a round whose first commit comes at or after its closeTime (only possible when
        extended), and under secure aggregation every round's first commit, restarts its clock there:
        openTime = now, closeTime = now + commitWindowSecs (WindowRestarted). Otherwise a network started long after its genesis time, or a swarm back
        from an outage, would close the round on the first update that arrives.
        Expected set. When round r opens, every active participant with missed < absentRounds (any
        missed when absentRounds = 0) is expected in r (expectedRound = r + 1). Someone who registers
        mid-round is expected from the next round. rejoin() (a dropped participant back online: its
        commits alone could never get in, since the window closes early once the expected have
        committed) resets missed to 0 as well. Any commit resets the committer's missed to 0, so
        a dropped participant that commits again is expected from the next round on.
        Early close: the commit (or leave) after which every participant still expected has committed
        and commitCount >= minParticipants closes the window in that block.
        Straggler grace (stragglerGracePct > 0): the first time commitCount reaches
        quorum = max(minParticipants, ceil(2 * expectedCount / 3)) while the window is still open,
        closeTime = min(closeTime, now + max(minGraceSecs, (now - openTime) * stragglerGracePct / 100)).
        It is applied at most once per round (a later application could only give a later deadline);
        DeadlineShortened is emitted only when closeTime actually moves.
        Skipped round (with skipUnderMin, or under secure aggregation): its window closed with
        commitCount < minParticipants.
        Validators must attest exactly its baseHash; it finalizes with skipped = true, its commits are
        not included and not paid, and the validators get only their usual share (so censoring commits
        to force a skip never pays a proposer more).
        Absence. At the finalization of r, every participant expected in r that neither committed nor
        left gets missed += 1 and is listed in getAbsent(r); when missed reaches absentRounds it is
        dropped from the expected set (ParticipantDropped). Leaving while expected is not an absence.
        Each round keeps its expected set as a bitmap over registry indices, so getAbsent(r) is derived
        from it and the commits instead of being written out participant by participant.
        Membership. The registry is append-only: an address keeps its index (its data partition) for
        ever. admissionMode 0 (stake): register pays exactly participantBond, held here and refunded
        by leave. admissionMode 1 (allow-list): no value; approvals are 65-byte signatures r || s || v
        (v in {27, 28}) by validators over keccak256(abi_encode(keccak256("swarmnode-admit"), chain.id,
        this contract, participant)), sorted by strictly increasing signer address, each signer with
        stake > 0, together more than 2/3 of Staking.totalStake(). As in Staking.slash, s is not
        required to be low: signers are deduplicated by recovered address, so a malleated signature
        gains nothing. An approval admits an address, not one registration: after leave the same
        approvals admit it again while their signers still hold > 2/3 of the stake. A participant
        that left may register again (same index, its own peer id or a free one; a peer id stays
        reserved to its last owner until that owner registers under another one). Genesis
        participants are registered with no bond and are expected in round 0.
        Attestations: validators (stake > 0 in Staking) attest once the window is closed; a round
        finalizes when the stake that attested one hash is more than 2/3 of Staking.totalStake().
        Fixed point and bounds: localLoss, localAccuracy, heldOutLoss and heldOutAccuracy are
        value * 1e6; accuracies <= 1e6; numSamples and heldOutCount <= maxSamples (<= 2**64), losses
        <= 2**64 and rewardPerRound <= 2**128, so payouts cannot overflow.
        Held-out scores: with its commit, a participant reports how the round's base model scored on
        heldOutCount examples of its own held-out split (a node without one reports 0, 0, 0: a count
        of 0 means not scored, and then the scores must be 0). They are public history only: no reward
        or aggregation weight depends on them.
        Rewards: rewardPerRound * contributorShareBps / 10000 goes to the contributors of a round that
        is not skipped, by sample count; the rest to the validators that attested the final hash, by
        attested stake. Validators that attested another hash get nothing and lose mismatchPenaltyBps
        of their stake. Undistributed amounts and integer-division dust stay in the Staking pool.
        roundReward(r, account) is derived from the round's commits and attestations; only what
        Staking could not credit (its pool ran dry) is stored. Finalizing with 128 contributors and 64
        attestations, 60 of them wrong by validators then forced out, costs about 11.6M gas (measured in
        tests/unit/test_contracts.py); an attester cannot unbond before its round is final (Staking).
        Privacy budget (epsilonBudget > 0, micro-epsilon; the genesis [privacy] table): every commit
        reports the epsilon its participant has spent after that round (its own accountant's figure,
        rounded up). It must grow with every commit and stay <= epsilonBudget, so a node can never
        release more than the genesis allows and the spend of every participant is public
        (epsilonSpent, dpReleases). The contract cannot check the figure: a participant that understates
        it only weakens its own privacy. With epsilonBudget = 0 every commit reports 0.
        Secure aggregation (secureAggregation, which needs minParticipants >= 2): each participant sets a
        long-term X25519 share key once (setShareKey; it never changes). For round r it posts, before r's first commit (during r or r - 1), its round mask
        key, a commitment to its self-mask seed and a bundle of Shamir shares encrypted to every share-key
        holder (postMaskKeys; the bundle travels in the calldata, its keccak256 is stored). The key set of
        r is frozen by r's first commit: a commit must come from a key poster and name the key set's size
        (keyCount), so every masked update was masked over the same set. Once the window is closed, any
        active participant with a share key posts its decrypted shares once (revealShares: calldata, hash
        stored) until revealDeadline(r) = (the early-close time, or max(closeTime, last commit time))
        + revealWindowSecs, and only in a round with at least minParticipants commits; after it the reveal
        list is final and every node derives the same sum, or the
        same verdict that it cannot be unmasked.
"""

MAX_PARTICIPANTS: constant(uint256) = 128
MAX_ATTESTATIONS: constant(uint256) = 128
MAX_APPROVALS: constant(uint256) = 64  # Staking.MAX_VALIDATORS
MAX_PEER_ID: constant(uint256) = 64
BPS: constant(uint256) = 10000
FIXED_ONE: constant(uint256) = 1000000
MAX_GRACE_PCT: constant(uint256) = 1000
MAX_DURATION: constant(uint256) = 2**40  # seconds; bounds deadline arithmetic
MAX_REPORTED: constant(uint256) = 2**64  # numSamples, localLoss
MAX_REWARD: constant(uint256) = 2**128
ADMISSION_STAKE: constant(uint256) = 0
ADMISSION_ALLOWLIST: constant(uint256) = 1
ADMIT_TAG: constant(bytes32) = keccak256("swarmnode-admit")
# A secp256k1 libp2p peer id: base58btc of the identity multihash (0x00 0x25) of the protobuf PublicKey
# (0x08 0x02 = KeyType Secp256k1, 0x12 0x21 = 33 data bytes) of the compressed key (0x02|0x03 || x)
PEER_ID_LEN: constant(uint256) = 53
PEER_ID_PREFIX: constant(uint256) = 159048143393  # 0x2508021221, the 5 bytes after the leading 0x00 ('1' in base58)
SECP256K1_P: constant(uint256) = 115792089237316195423570985008687907853269984665640564039457584007908834671663  # 2**256 - 2**32 - 977
MODEXP: constant(address) = 0x0000000000000000000000000000000000000005
MAX_BUNDLE: constant(uint256) = 12288  # bytes of encrypted shares: 128 recipients take 10664
MAX_REVEAL: constant(uint256) = 6144  # bytes of revealed shares: 128 secrets take 4503

interface IStaking:
    def stakeOf(account: address) -> uint256: view
    def totalStake() -> uint256: view
    def creditReward(account: address, amount: uint256) -> uint256: nonpayable
    def penalize(validator: address, bps: uint256) -> uint256: nonpayable

struct RoundInfo:
    openBlock: uint256
    openTime: uint256  # when its clock started: at opening, or at a first commit past the deadline
    closeTime: uint256
    closeBlock: uint256  # early close: the commit's block; else the first attestation's block
    finalBlock: uint256
    baseHash: bytes32
    finalHash: bytes32
    commitCount: uint256
    totalSamples: uint256
    attestationCount: uint256
    participantCount: uint256  # active participants at open
    expectedCount: uint256
    expectedCommitted: uint256
    absentCount: uint256
    closedEarly: bool
    skipped: bool
    finalized: bool

struct ParticipantInfo:
    peerId: String[MAX_PEER_ID]
    index: uint256  # position in the registry, for ever
    registered: bool  # ever
    active: bool  # registered and not left
    missed: uint256  # consecutive rounds expected and not committed
    expectedRound: uint256  # r + 1 when expected in round r; 0: never
    bond: uint256  # wei held for it, refunded by leave

struct Commit:
    participant: address
    updateHash: bytes32
    numSamples: uint256
    localLoss: uint256
    localAccuracy: uint256
    heldOutLoss: uint256  # the base model's on the committer's held-out split
    heldOutAccuracy: uint256
    heldOutCount: uint256  # held-out examples scored; 0: not scored
    blockNumber: uint256
    epsilonSpent: uint256  # micro-epsilon spent by the committer after this commit (0: no privacy budget)

struct MaskKey:
    participant: address
    index: uint256  # registry index (its Shamir x-coordinate is index + 1)
    maskKey: bytes32  # X25519 public key for round r's pairwise masks
    seedCommit: bytes32  # commitment to the self-mask seed
    bundleHash: bytes32  # keccak256 of the encrypted share bundle (in the transaction's calldata)

struct Reveal:
    participant: address
    index: uint256
    revealHash: bytes32  # keccak256 of the revealed shares (in the transaction's calldata)

struct Attestation:
    validator: address
    modelHash: bytes32
    stake: uint256
    blockNumber: uint256

event Registered:
    participant: indexed(address)
    peerId: String[MAX_PEER_ID]
    index: uint256
    bond: uint256

event Left:
    participant: indexed(address)

event Rejoined:
    participant: indexed(address)
    round: indexed(uint256)

event RoundOpened:
    round: indexed(uint256)
    openBlock: uint256
    openTime: uint256
    closeTime: uint256
    baseHash: bytes32
    participantCount: uint256
    expectedCount: uint256

event UpdateCommitted:
    round: indexed(uint256)
    participant: indexed(address)
    index: uint256
    updateHash: bytes32
    numSamples: uint256
    localLoss: uint256
    localAccuracy: uint256
    heldOutLoss: uint256
    heldOutAccuracy: uint256
    heldOutCount: uint256
    epsilonSpent: uint256

event ShareKeySet:
    participant: indexed(address)
    shareKey: bytes32

event MaskKeysPosted:
    round: indexed(uint256)
    participant: indexed(address)
    slot: uint256
    bundleHash: bytes32

event SharesRevealed:
    round: indexed(uint256)
    participant: indexed(address)
    revealHash: bytes32

event WindowClosedEarly:
    round: indexed(uint256)
    closeBlock: uint256
    commitCount: uint256

event DeadlineShortened:
    round: indexed(uint256)
    closeTime: uint256

event WindowRestarted:
    round: indexed(uint256)
    openTime: uint256
    closeTime: uint256

event AggregateAttested:
    round: indexed(uint256)
    validator: indexed(address)
    modelHash: bytes32
    stake: uint256

event RoundSkipped:
    round: indexed(uint256)
    commitCount: uint256

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

event ParticipantAbsent:
    round: indexed(uint256)
    participant: indexed(address)
    missed: uint256

event ParticipantDropped:
    round: indexed(uint256)
    participant: indexed(address)

# ---------------------------------------------------------------- parameters (fixed at genesis)
staking: public(address)
genesisModelHash: public(bytes32)
commitWindowSecs: public(uint256)
stragglerGracePct: public(uint256)
minGraceSecs: public(uint256)
minParticipants: public(uint256)
skipUnderMin: public(bool)
absentRounds: public(uint256)
admissionMode: public(uint256)
maxSamples: public(uint256)  # the largest numSamples a commit may report (genesis)
participantBond: public(uint256)
rewardPerRound: public(uint256)
contributorShareBps: public(uint256)
mismatchPenaltyBps: public(uint256)
initialParticipantCount: public(uint256)  # the first entries of the registry
initialPeerIds: DynArray[String[MAX_PEER_ID], MAX_PARTICIPANTS]
epsilonBudget: public(uint256)  # micro-epsilon per participant; 0: no differential-privacy ledger
privacyDelta: uint256  # the budget's delta * 1e18 (recorded; the genesis [privacy] table shows it)
secureAggregation: public(bool)
revealWindowSecs: uint256  # see revealDeadline

# ---------------------------------------------------------------- rounds
currentRound: public(uint256)
rounds: HashMap[uint256, RoundInfo]
graceApplied: public(HashMap[uint256, bool])
commits: HashMap[uint256, HashMap[uint256, Commit]]
committed: HashMap[uint256, HashMap[address, bool]]
updateSeen: HashMap[uint256, HashMap[bytes32, bool]]
expectedSet: HashMap[uint256, uint256]  # round -> bit i set: registry[i] expected (cleared if it left uncommitted)
attestations: HashMap[uint256, HashMap[uint256, Attestation]]
attestedHash: HashMap[uint256, HashMap[address, bytes32]]
attestedStake: public(HashMap[uint256, HashMap[bytes32, uint256]])
mismatched: HashMap[uint256, HashMap[address, bool]]
shortfall: HashMap[uint256, HashMap[address, uint256]]  # credited below its share: Staking's pool ran dry

# ---------------------------------------------------------------- participants
members: HashMap[address, ParticipantInfo]
peerIdOwner: public(HashMap[bytes32, address])  # keccak256(peerId) -> its (last) owner
registry: DynArray[address, MAX_PARTICIPANTS]  # append-only: an index never changes
activeCount: uint256
totalBonds: public(uint256)  # wei held for active participants; equals this contract's balance

# privacy
epsilonSpent: public(HashMap[address, uint256])  # micro-epsilon, as of the participant's last commit
dpReleases: public(HashMap[address, uint256])  # commits made under the budget
shareKeyOf: public(HashMap[address, bytes32])
maskKeys: HashMap[uint256, DynArray[MaskKey, MAX_PARTICIPANTS]]
maskKeyPosted: HashMap[uint256, HashMap[address, bool]]
reveals: HashMap[uint256, DynArray[Reveal, MAX_PARTICIPANTS]]
revealed: HashMap[uint256, HashMap[address, bool]]
closedAt: HashMap[uint256, uint256]  # block time of an early close
lastCommitAt: HashMap[uint256, uint256]  # block time of the round's last commit


@deploy
def __init__(
    staking: address,
    genesisModelHash: bytes32,
    commitWindowSecs: uint256,
    stragglerGracePct: uint256,
    minGraceSecs: uint256,
    minParticipants: uint256,
    skipUnderMin: bool,
    absentRounds: uint256,
    admissionMode: uint256,
    maxSamples: uint256,
    participantBond: uint256,
    rewardPerRound: uint256,
    contributorShareBps: uint256,
    mismatchPenaltyBps: uint256,
    initialParticipants: DynArray[address, MAX_PARTICIPANTS],
    initialPeerIds: DynArray[String[MAX_PEER_ID], MAX_PARTICIPANTS],
    epsilonBudget: uint256,
    privacyDelta: uint256,
    secureAggregation: bool,
    revealWindowSecs: uint256,
):
    assert staking != empty(address), "init: zero Staking address"
    assert commitWindowSecs > 0, "init: zero commit window"
    assert commitWindowSecs <= MAX_DURATION, "init: commit window above 2**40 s"
    assert stragglerGracePct <= MAX_GRACE_PCT, "init: straggler grace above 1000 pct"
    assert minGraceSecs <= MAX_DURATION, "init: min grace above 2**40 s"
    assert minParticipants >= 1, "init: min participants below 1"
    assert minParticipants <= MAX_PARTICIPANTS, "init: min participants above 128"
    assert not skipUnderMin or genesisModelHash != empty(bytes32), "init: skipping needs a genesis model hash"
    assert admissionMode <= ADMISSION_ALLOWLIST, "init: admission mode is not 0 or 1"
    assert maxSamples >= 1, "init: max samples below 1"
    assert maxSamples <= MAX_REPORTED, "init: max samples above 2**64"
    assert rewardPerRound <= MAX_REWARD, "init: reward per round above 2**128"
    assert contributorShareBps <= BPS, "init: contributor share above 10000 bps"
    assert mismatchPenaltyBps <= BPS, "init: mismatch penalty above 10000 bps"
    assert len(initialParticipants) == len(initialPeerIds), "init: participants and peer ids differ in length"
    assert epsilonBudget <= MAX_REPORTED, "init: epsilon budget above 2**64"
    assert privacyDelta < 10**18, "init: privacy delta not below 1"
    assert (epsilonBudget == 0) == (privacyDelta == 0), "init: epsilon and delta go together"
    assert revealWindowSecs <= MAX_DURATION, "init: reveal window above 2**40 s"
    assert not secureAggregation or revealWindowSecs > 0, "init: secagg needs a reveal window"
    assert not secureAggregation or minParticipants >= 2, "init: secagg needs 2 participants"
    self.staking = staking
    self.genesisModelHash = genesisModelHash
    self.commitWindowSecs = commitWindowSecs
    self.stragglerGracePct = stragglerGracePct
    self.minGraceSecs = minGraceSecs
    self.minParticipants = minParticipants
    self.skipUnderMin = skipUnderMin
    self.absentRounds = absentRounds
    self.admissionMode = admissionMode
    self.maxSamples = maxSamples
    self.participantBond = participantBond
    self.rewardPerRound = rewardPerRound
    self.contributorShareBps = contributorShareBps
    self.mismatchPenaltyBps = mismatchPenaltyBps
    self.epsilonBudget = epsilonBudget
    self.privacyDelta = privacyDelta
    self.secureAggregation = secureAggregation
    self.revealWindowSecs = revealWindowSecs
    self.initialParticipantCount = len(initialParticipants)
    self.initialPeerIds = initialPeerIds
    for i: uint256 in range(len(initialParticipants), bound=MAX_PARTICIPANTS):
        assert initialParticipants[i] != empty(address), "init: zero participant address"
        self._register(initialParticipants[i], initialPeerIds[i], 0)
    self._openRound(0, genesisModelHash)


# ---------------------------------------------------------------- internal: membership

@internal
def _register(participant: address, peerId: String[MAX_PEER_ID], bond: uint256):
    """Admit `participant` (new, or back after leave) under `peerId`; the caller checked admission."""
    assert len(peerId) > 0, "register: empty peer id"
    assert not self.members[participant].active, "register: already registered"
    key: bytes32 = keccak256(peerId)
    owner: address = self.peerIdOwner[key]
    assert owner == empty(address) or owner == participant, "register: peer id already taken"
    index: uint256 = 0
    if self.members[participant].registered:
        index = self.members[participant].index
        old: String[MAX_PEER_ID] = self.members[participant].peerId
        if keccak256(old) != key:
            self.peerIdOwner[keccak256(old)] = empty(address)
    else:
        index = len(self.registry)
        assert index < MAX_PARTICIPANTS, "register: participant registry full"
        self.registry.append(participant)
    self.peerIdOwner[key] = participant
    self.members[participant] = ParticipantInfo(
        peerId=peerId, index=index, registered=True, active=True, missed=0, expectedRound=0, bond=bond
    )
    self.activeCount += 1
    self.totalBonds += bond
    log Registered(participant=participant, peerId=peerId, index=index, bond=bond)


@internal
@pure
def _base58Digit(c: uint256) -> uint256:
    """The value of one base58btc character (alphabet without 0, O, I and l)."""
    if c >= 49 and c <= 57:
        return c - 49
    if c >= 65 and c <= 72:
        return c - 56
    if c >= 74 and c <= 78:
        return c - 57
    if c >= 80 and c <= 90:
        return c - 58
    if c >= 97 and c <= 107:
        return c - 64
    if c >= 109 and c <= 122:
        return c - 65
    raise "register: peer id is not base58"


@internal
@view
def _peerIdAddress(peerId: String[MAX_PEER_ID]) -> address:
    """The account whose secp256k1 key `peerId` embeds; reverts unless it is a well-formed such peer id.

    Decodes the base58 digits into two limbs (the value has 304 bits), checks the multihash and
    protobuf prefix, recovers y from x on the curve (y = (x^3 + 7)^((p + 1) / 4) mod p through the
    MODEXP precompile) and hashes x || y the way every Ethereum address is derived."""
    raw: Bytes[MAX_PEER_ID] = convert(peerId, Bytes[MAX_PEER_ID])
    assert len(raw) == PEER_ID_LEN, "register: peer id is not a secp256k1 peer id (length)"
    assert convert(convert(slice(raw, 0, 1), bytes1), uint256) == 49, "register: peer id is not a secp256k1 peer id"
    hi: uint256 = 0
    lo: uint256 = 0
    for i: uint256 in range(1, PEER_ID_LEN):
        lo = lo * 58 + self._base58Digit(convert(convert(slice(raw, i, 1), bytes1), uint256))
        hi = hi * 58 + (lo >> 128)
        lo = lo & (2**128 - 1)
    assert hi >> 136 == PEER_ID_PREFIX, "register: peer id is not a secp256k1 peer id"
    parity: uint256 = (hi >> 128) & 255
    assert parity == 2 or parity == 3, "register: peer id key is not compressed secp256k1"
    x: uint256 = ((hi & (2**128 - 1)) << 128) | lo
    assert x < SECP256K1_P, "register: peer id key is not on secp256k1"
    rhs: uint256 = uint256_addmod(uint256_mulmod(uint256_mulmod(x, x, SECP256K1_P), x, SECP256K1_P), 7, SECP256K1_P)
    out: Bytes[32] = raw_call(
        MODEXP,
        concat(convert(32, bytes32), convert(32, bytes32), convert(32, bytes32), convert(rhs, bytes32),
               convert((SECP256K1_P + 1) // 4, bytes32), convert(SECP256K1_P, bytes32)),
        max_outsize=32, is_static_call=True,
    )
    y: uint256 = convert(convert(out, bytes32), uint256)
    assert uint256_mulmod(y, y, SECP256K1_P) == rhs, "register: peer id key is not on secp256k1"
    if y % 2 != parity - 2:
        y = SECP256K1_P - y
    return convert(convert(keccak256(concat(convert(x, bytes32), convert(y, bytes32))), uint256) & (2**160 - 1), address)


@internal
@view
def _checkApprovals(participant: address, approvals: DynArray[Bytes[65], MAX_APPROVALS]):
    """Reverts unless the approvals admit `participant`: valid, sorted, validators, > 2/3 of stake."""
    digest: bytes32 = keccak256(abi_encode(ADMIT_TAG, chain.id, self, participant))
    previous: uint256 = 0
    approved: uint256 = 0
    for sig: Bytes[65] in approvals:
        assert len(sig) == 65, "register: approval is not 65 bytes"
        v: uint256 = convert(slice(sig, 64, 1), uint256)
        assert v == 27 or v == 28, "register: approval v is not 27 or 28"
        signer: address = ecrecover(digest, v, extract32(sig, 0), extract32(sig, 32))
        assert signer != empty(address), "register: approval signature is invalid"
        assert convert(signer, uint256) > previous, "register: approval signers not strictly increasing"
        previous = convert(signer, uint256)
        stake: uint256 = staticcall IStaking(self.staking).stakeOf(signer)
        assert stake > 0, "register: approval signer is not a validator"
        approved += stake
    total: uint256 = staticcall IStaking(self.staking).totalStake()
    assert approved * 3 > total * 2, "register: approvals hold at most 2/3 of stake"


# ---------------------------------------------------------------- internal: rounds

@internal
def _openRound(r: uint256, baseHash: bytes32):
    """Open round r: deadline from now, and the expected set from the registry."""
    absentRounds: uint256 = self.absentRounds
    expected: uint256 = 0
    bits: uint256 = 0
    for i: uint256 in range(len(self.registry), bound=MAX_PARTICIPANTS):
        p: address = self.registry[i]
        if not self.members[p].active:
            continue
        if absentRounds == 0 or self.members[p].missed < absentRounds:
            self.members[p].expectedRound = r + 1
            bits |= 1 << i
            expected += 1
    self.expectedSet[r] = bits
    closeTime: uint256 = block.timestamp + self.commitWindowSecs
    active: uint256 = self.activeCount
    self.currentRound = r
    self.rounds[r].openBlock = block.number
    self.rounds[r].openTime = block.timestamp
    self.rounds[r].closeTime = closeTime
    self.rounds[r].baseHash = baseHash
    self.rounds[r].participantCount = active
    self.rounds[r].expectedCount = expected
    log RoundOpened(round=r, openBlock=block.number, openTime=block.timestamp, closeTime=closeTime, baseHash=baseHash, participantCount=active, expectedCount=expected)


@internal
@view
def _windowOpen(r: uint256) -> bool:
    if self.rounds[r].finalized:
        return False
    commitCount: uint256 = self.rounds[r].commitCount
    if not self.skipUnderMin and commitCount < self.minParticipants:
        # extended until enough commits arrive; under secure aggregation only until the first, which
        # freezes the key set: its members have the window, and a silent member cannot hold it open
        if not self.secureAggregation or commitCount == 0:
            return True
    if self.rounds[r].closedEarly:
        return False
    return block.timestamp < self.rounds[r].closeTime


@internal
def _restartClock(r: uint256):
    closeTime: uint256 = block.timestamp + self.commitWindowSecs
    self.rounds[r].openTime = block.timestamp
    self.rounds[r].closeTime = closeTime
    log WindowRestarted(round=r, openTime=block.timestamp, closeTime=closeTime)


@internal
def _afterProgress(r: uint256):
    """After a commit or a leave in open round r: close early if complete, else maybe shorten the deadline."""
    commitCount: uint256 = self.rounds[r].commitCount
    expectedCount: uint256 = self.rounds[r].expectedCount
    minParticipants: uint256 = self.minParticipants
    if commitCount < minParticipants:
        return
    if self.rounds[r].expectedCommitted >= expectedCount:
        self.rounds[r].closedEarly = True
        self.rounds[r].closeBlock = block.number
        self.closedAt[r] = block.timestamp
        log WindowClosedEarly(round=r, closeBlock=block.number, commitCount=commitCount)
        return
    pct: uint256 = self.stragglerGracePct
    if pct == 0 or self.graceApplied[r]:
        return
    if self.rounds[r].expectedCommitted < (2 * expectedCount + 2) // 3:
        return  # grace starts at 2/3 of the *expected*: newcomers' commits do not shorten anyone's window
    self.graceApplied[r] = True
    elapsed: uint256 = block.timestamp - self.rounds[r].openTime
    deadline: uint256 = block.timestamp + max(self.minGraceSecs, elapsed * pct // 100)
    if deadline < self.rounds[r].closeTime:
        self.rounds[r].closeTime = deadline
        log DeadlineShortened(round=r, closeTime=deadline)


@internal
def _credit(r: uint256, account: address, amount: uint256) -> uint256:
    """Credit `amount` through Staking; only a shortfall is stored (roundReward derives the rest)."""
    paid: uint256 = extcall IStaking(self.staking).creditReward(account, amount)
    if paid < amount:
        self.shortfall[r][account] += amount - paid
    return paid


@internal
def _payContributors(r: uint256, pool: uint256):
    count: uint256 = self.rounds[r].commitCount
    totalSamples: uint256 = self.rounds[r].totalSamples
    for i: uint256 in range(count, bound=MAX_PARTICIPANTS):
        participant: address = self.commits[r][i].participant
        amount: uint256 = pool * self.commits[r][i].numSamples // totalSamples
        paid: uint256 = self._credit(r, participant, amount)
        log ContributorRewarded(round=r, participant=participant, amount=paid)


@internal
def _settleValidators(r: uint256, finalHash: bytes32, pool: uint256):
    """Reward the attesters of `finalHash` by stake; record and penalize the others."""
    count: uint256 = self.rounds[r].attestationCount
    winningStake: uint256 = self.attestedStake[r][finalHash]
    penaltyBps: uint256 = self.mismatchPenaltyBps
    for i: uint256 in range(count, bound=MAX_ATTESTATIONS):
        validator: address = self.attestations[r][i].validator
        attested: bytes32 = self.attestations[r][i].modelHash
        if attested == finalHash:
            amount: uint256 = pool * self.attestations[r][i].stake // winningStake
            paid: uint256 = self._credit(r, validator, amount)
            log ValidatorRewarded(round=r, validator=validator, amount=paid)
        else:
            self.mismatched[r][validator] = True
            penalty: uint256 = extcall IStaking(self.staking).penalize(validator, penaltyBps)
            log AttestationMismatch(round=r, validator=validator, attestedHash=attested, finalHash=finalHash, penalty=penalty)


@internal
def _recordAbsentees(r: uint256):
    """Every participant expected in r that did not commit (and did not leave) missed round r."""
    bits: uint256 = self.expectedSet[r]
    absentRounds: uint256 = self.absentRounds
    count: uint256 = 0
    for i: uint256 in range(len(self.registry), bound=MAX_PARTICIPANTS):
        if bits & (1 << i) == 0:
            continue
        p: address = self.registry[i]
        if self.committed[r][p]:
            continue
        missed: uint256 = self.members[p].missed + 1
        self.members[p].missed = missed
        count += 1
        log ParticipantAbsent(round=r, participant=p, missed=missed)
        if missed == absentRounds:
            log ParticipantDropped(round=r, participant=p)
    self.rounds[r].absentCount = count


@internal
def _finalize(r: uint256, modelHash: bytes32, skipped: bool):
    self.rounds[r].finalized = True
    self.rounds[r].finalHash = modelHash
    self.rounds[r].finalBlock = block.number
    total: uint256 = self.rewardPerRound
    contributorPool: uint256 = total * self.contributorShareBps // BPS
    commitCount: uint256 = self.rounds[r].commitCount
    if skipped:
        self.rounds[r].skipped = True
        log RoundSkipped(round=r, commitCount=commitCount)
    else:
        self._payContributors(r, contributorPool)
    self._settleValidators(r, modelHash, total - contributorPool)
    self._recordAbsentees(r)
    log RoundFinalized(round=r, modelHash=modelHash, finalBlock=block.number, commitCount=commitCount, attestedStake=self.attestedStake[r][modelHash])
    self._openRound(r + 1, modelHash)


# ---------------------------------------------------------------- participants

@external
@payable
def register(peerId: String[MAX_PEER_ID], approvals: DynArray[Bytes[65], MAX_APPROVALS] = []):
    """Register the sender under its libp2p peer id (again after leave: same index), per admissionMode."""
    if self.admissionMode == ADMISSION_STAKE:
        assert len(approvals) == 0, "register: approvals are for allow-list admission only"
        assert msg.value == self.participantBond, "register: value is not the participant bond"
    else:
        assert msg.value == 0, "register: allow-list admission takes no value"
        self._checkApprovals(msg.sender, approvals)
    # the peer id must be the sender's own key: no one can register (or squat) another node's identity
    assert self._peerIdAddress(peerId) == msg.sender, "register: peer id is not the sender's key"
    self._register(msg.sender, peerId, msg.value)


@external
@nonreentrant
def leave():
    """Stop participating: refund the bond; if expected and not committed yet, stop being waited for."""
    assert self.members[msg.sender].active, "leave: sender is not an active participant"
    r: uint256 = self.currentRound
    bond: uint256 = self.members[msg.sender].bond
    wasExpected: bool = self.members[msg.sender].expectedRound == r + 1
    self.members[msg.sender].active = False
    self.members[msg.sender].expectedRound = 0
    self.members[msg.sender].bond = 0
    self.activeCount -= 1
    self.totalBonds -= bond
    if wasExpected and not self.committed[r][msg.sender]:
        self.expectedSet[r] &= ~(1 << self.members[msg.sender].index)  # not waited for, not absent
        self.rounds[r].expectedCount -= 1
        if self._windowOpen(r):
            self._afterProgress(r)
    log Left(participant=msg.sender)
    if bond > 0:
        raw_call(msg.sender, b"", value=bond)


@external
def rejoin():
    """A participant dropped from the expected set (missed absentRounds rounds in a row) is back: it is
    expected again from the next round, so windows wait for it as for everyone else."""
    assert self.members[msg.sender].active, "rejoin: sender is not an active participant"
    assert self.absentRounds != 0 and self.members[msg.sender].missed >= self.absentRounds, \
        "rejoin: sender is still expected"
    self.members[msg.sender].missed = 0
    log Rejoined(participant=msg.sender, round=self.currentRound)


@external
@view
def isRegistered(account: address) -> bool:
    """True while `account` is an active participant."""
    return self.members[account].active


@external
@view
def isExpected(account: address) -> bool:
    """True if the current round waits for `account`'s commit (committed or not)."""
    return self.members[account].expectedRound == self.currentRound + 1


@external
@view
def participantCount() -> uint256:
    """Active participants."""
    return self.activeCount


@external
@view
def registrySize() -> uint256:
    """Every address ever registered, active or not."""
    return len(self.registry)


@external
@view
def getParticipants() -> DynArray[address, MAX_PARTICIPANTS]:
    """The whole registry in index order (indices are stable; see isRegistered for who is active)."""
    return self.registry


@external
@view
def participantAt(index: uint256) -> address:
    assert index < len(self.registry), "participantAt: index out of range"
    return self.registry[index]


@external
@view
def getParticipant(account: address) -> ParticipantInfo:
    return self.members[account]


@external
@view
def peerIdOf(account: address) -> String[MAX_PEER_ID]:
    """The peer id `account` last registered under (kept after leave)."""
    return self.members[account].peerId


@external
@view
def getInitialParticipants() -> DynArray[address, MAX_PARTICIPANTS]:
    """The genesis participants (the constructor's initialParticipants)."""
    out: DynArray[address, MAX_PARTICIPANTS] = []
    for i: uint256 in range(self.initialParticipantCount, bound=MAX_PARTICIPANTS):
        out.append(self.registry[i])
    return out


@external
@view
def getInitialPeerIds() -> DynArray[String[MAX_PEER_ID], MAX_PARTICIPANTS]:
    """The constructor's initialPeerIds."""
    return self.initialPeerIds


# ---------------------------------------------------------------- commits

@external
def commitUpdate(
    round: uint256,
    updateHash: bytes32,
    numSamples: uint256,
    localLoss: uint256,
    localAccuracy: uint256,
    heldOutLoss: uint256,
    heldOutAccuracy: uint256,
    heldOutCount: uint256,
    epsilonSpent: uint256,
    keyCount: uint256,
):
    """Commit the hash of the sender's update for the current round, once, inside the window, with its
    training metrics, the round's base model's scores on the sender's held-out split (count 0: none), the
    epsilon it has spent after this round (micro; 0 without a privacy budget) and, with secure
    aggregation, the size of the key set it masked over (0 without)."""
    assert self.members[msg.sender].active, "commitUpdate: sender not registered"
    assert round == self.currentRound, "commitUpdate: wrong round"
    assert self._windowOpen(round), "commitUpdate: commit window closed"
    assert not self.committed[round][msg.sender], "commitUpdate: already committed this round"
    assert updateHash != empty(bytes32), "commitUpdate: empty update hash"
    assert not self.updateSeen[round][updateHash], "commitUpdate: duplicate update hash"
    assert numSamples > 0, "commitUpdate: zero samples"
    # a sample count is the participant's own claim: the genesis caps it, which bounds both its share of
    # the contributor rewards and the weight the aggregation rules may give it
    assert numSamples <= self.maxSamples, "commitUpdate: numSamples above maxSamples"
    assert localLoss <= MAX_REPORTED, "commitUpdate: localLoss above 2**64"
    assert localAccuracy <= FIXED_ONE, "commitUpdate: accuracy above 1e6"
    # a held-out count weighs the score in the public history (not in rewards): capped like numSamples
    assert heldOutCount <= self.maxSamples, "commitUpdate: heldOutCount above maxSamples"
    assert heldOutLoss <= MAX_REPORTED, "commitUpdate: heldOutLoss above 2**64"
    assert heldOutAccuracy <= FIXED_ONE, "commitUpdate: heldOutAccuracy above 1e6"
    assert heldOutCount > 0 or (heldOutLoss == 0 and heldOutAccuracy == 0), \
        "commitUpdate: held-out scores without a held-out count"
    budget: uint256 = self.epsilonBudget
    if budget == 0:
        assert epsilonSpent == 0, "commitUpdate: epsilon, no budget"
    else:
        assert epsilonSpent > self.epsilonSpent[msg.sender], "commitUpdate: epsilon not grown"
        assert epsilonSpent <= budget, "commitUpdate: budget exhausted"
        self.epsilonSpent[msg.sender] = epsilonSpent
        self.dpReleases[msg.sender] += 1
    if self.secureAggregation:
        assert self.maskKeyPosted[round][msg.sender], "commitUpdate: no mask keys"
        assert keyCount == len(self.maskKeys[round]), "commitUpdate: wrong key count"
    else:
        assert keyCount == 0, "commitUpdate: keyCount not 0"
    index: uint256 = self.rounds[round].commitCount
    # a late first commit restarts the clock; under secure aggregation every first commit does, since it
    # freezes the key set and the round is no longer extended: its members get a whole window from it
    if index == 0 and (self.secureAggregation or block.timestamp >= self.rounds[round].closeTime):
        self._restartClock(round)
    self.commits[round][index] = Commit(
        participant=msg.sender,
        updateHash=updateHash,
        numSamples=numSamples,
        localLoss=localLoss,
        localAccuracy=localAccuracy,
        heldOutLoss=heldOutLoss,
        heldOutAccuracy=heldOutAccuracy,
        heldOutCount=heldOutCount,
        blockNumber=block.number,
        epsilonSpent=epsilonSpent,
    )
    self.lastCommitAt[round] = block.timestamp
    self.committed[round][msg.sender] = True
    self.updateSeen[round][updateHash] = True
    self.rounds[round].commitCount = index + 1
    self.rounds[round].totalSamples += numSamples
    if self.members[msg.sender].expectedRound == round + 1:
        self.rounds[round].expectedCommitted += 1
    if self.members[msg.sender].missed != 0:
        self.members[msg.sender].missed = 0
    log UpdateCommitted(round=round, participant=msg.sender, index=index, updateHash=updateHash, numSamples=numSamples, localLoss=localLoss, localAccuracy=localAccuracy,
        heldOutLoss=heldOutLoss, heldOutAccuracy=heldOutAccuracy, heldOutCount=heldOutCount, epsilonSpent=epsilonSpent)
    self._afterProgress(round)


# ---------------------------------------------------------------- secure aggregation

@internal
@view
def _revealDeadline(r: uint256) -> uint256:
    closed: uint256 = self.closedAt[r]
    if closed == 0:
        closed = max(self.rounds[r].closeTime, self.lastCommitAt[r])
    return closed + self.revealWindowSecs


@external
def setShareKey(shareKey: bytes32):
    """Set the sender's long-term X25519 share key, once: the key its Shamir shares are encrypted to. It never
    changes, so every node reads the same key set for a round whenever it reads it."""
    assert self.secureAggregation, "setShareKey: secagg off"
    assert self.members[msg.sender].active, "setShareKey: not registered"
    assert shareKey != empty(bytes32), "setShareKey: empty key"
    assert self.shareKeyOf[msg.sender] == empty(bytes32), "setShareKey: already set"
    self.shareKeyOf[msg.sender] = shareKey
    log ShareKeySet(participant=msg.sender, shareKey=shareKey)


@external
def postMaskKeys(round: uint256, maskKey: bytes32, seedCommit: bytes32, bundle: Bytes[MAX_BUNDLE]):
    """Join round `round`'s key set (the current round before its first commit, or the next one)."""
    assert self.secureAggregation, "postMaskKeys: secagg off"
    assert self.members[msg.sender].active, "postMaskKeys: not registered"
    assert self.shareKeyOf[msg.sender] != empty(bytes32), "postMaskKeys: no share key set"
    r: uint256 = self.currentRound
    assert round == r or round == r + 1, "postMaskKeys: wrong round"
    assert self.rounds[round].commitCount == 0, "postMaskKeys: key set frozen"
    assert not self.maskKeyPosted[round][msg.sender], "postMaskKeys: already posted"
    assert maskKey != empty(bytes32), "postMaskKeys: empty mask key"
    assert len(bundle) > 0, "postMaskKeys: empty bundle"
    slot: uint256 = len(self.maskKeys[round])
    bundleHash: bytes32 = keccak256(bundle)
    self.maskKeys[round].append(MaskKey(participant=msg.sender, index=self.members[msg.sender].index,
        maskKey=maskKey, seedCommit=seedCommit, bundleHash=bundleHash))
    self.maskKeyPosted[round][msg.sender] = True
    log MaskKeysPosted(round=round, participant=msg.sender, slot=slot, bundleHash=bundleHash)


@external
def revealShares(round: uint256, shares: Bytes[MAX_REVEAL]):
    """Post the sender's shares for the closed current round: of the committers' self-mask seeds and of the
    non-committing key posters' mask keys (swarmnode/privacy/secagg.py checks that never both)."""
    assert self.secureAggregation, "revealShares: secagg off"
    assert self.members[msg.sender].active, "revealShares: not registered"
    assert self.shareKeyOf[msg.sender] != empty(bytes32), "revealShares: no share key set"
    assert round == self.currentRound, "revealShares: wrong round"
    assert not self._windowOpen(round), "revealShares: window open"
    # a skipped round, or one below minParticipants, is never unmasked: its sum would be too few updates
    assert self.rounds[round].commitCount >= self.minParticipants, "revealShares: too few commits"
    assert block.timestamp < self._revealDeadline(round), "revealShares: too late"
    assert not self.revealed[round][msg.sender], "revealShares: already revealed"
    assert len(shares) > 0, "revealShares: empty shares"
    revealHash: bytes32 = keccak256(shares)
    self.reveals[round].append(Reveal(participant=msg.sender, index=self.members[msg.sender].index, revealHash=revealHash))
    self.revealed[round][msg.sender] = True
    log SharesRevealed(round=round, participant=msg.sender, revealHash=revealHash)


@external
@view
def getMaskKeys(round: uint256) -> DynArray[MaskKey, MAX_PARTICIPANTS]:
    """Round `round`'s key set in posting order (frozen once the round has a commit)."""
    return self.maskKeys[round]


@external
@view
def getReveals(round: uint256) -> DynArray[Reveal, MAX_PARTICIPANTS]:
    """Round `round`'s reveals in chain order."""
    return self.reveals[round]


@external
@view
def revealDeadline(round: uint256) -> uint256:
    """Block time from which `round`'s reveals are final (meaningful once its window is closed)."""
    return self._revealDeadline(round)


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
    skipped: bool = self.rounds[round].commitCount < self.minParticipants  # closed below min: skip mode
    if skipped:
        assert modelHash == self.rounds[round].baseHash, "attestAggregate: skipped round must attest its base hash"
    index: uint256 = self.rounds[round].attestationCount
    assert index < MAX_ATTESTATIONS, "attestAggregate: too many attestations"
    if self.rounds[round].closeBlock == 0:
        self.rounds[round].closeBlock = block.number
    self.attestations[round][index] = Attestation(validator=msg.sender, modelHash=modelHash, stake=stake, blockNumber=block.number)
    self.attestedHash[round][msg.sender] = modelHash
    self.rounds[round].attestationCount = index + 1
    self.attestedStake[round][modelHash] += stake
    log AggregateAttested(round=round, validator=msg.sender, modelHash=modelHash, stake=stake)
    total: uint256 = staticcall IStaking(self.staking).totalStake()
    if self.attestedStake[round][modelHash] * 3 > total * 2:
        self._finalize(round, modelHash, skipped)
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
def baseHash(round: uint256) -> bytes32:
    """The model round `round` starts from: the genesis model, or the final hash of round - 1."""
    assert round <= self.currentRound, "baseHash: round not open yet"
    return self.rounds[round].baseHash


@external
@view
def getAbsent(round: uint256) -> DynArray[address, MAX_PARTICIPANTS]:
    """The participants expected in `round` that did not commit, in registry order (empty until it finalizes)."""
    out: DynArray[address, MAX_PARTICIPANTS] = []
    if not self.rounds[round].finalized:
        return out
    bits: uint256 = self.expectedSet[round]
    for i: uint256 in range(len(self.registry), bound=MAX_PARTICIPANTS):
        if bits & (1 << i) != 0 and not self.committed[round][self.registry[i]]:
            out.append(self.registry[i])
    return out


@external
@view
def roundReward(round: uint256, account: address) -> uint256:
    """What `account` was credited for `round` (contributor plus validator share; 0 until it finalizes).
    Derived from the round's commits and attestations, so finalization writes no slot per payee."""
    if not self.rounds[round].finalized:
        return 0
    total: uint256 = self.rewardPerRound
    contributorPool: uint256 = total * self.contributorShareBps // BPS
    owed: uint256 = 0
    if not self.rounds[round].skipped and self.committed[round][account]:
        for i: uint256 in range(self.rounds[round].commitCount, bound=MAX_PARTICIPANTS):
            if self.commits[round][i].participant == account:
                owed += contributorPool * self.commits[round][i].numSamples // self.rounds[round].totalSamples
                break
    finalHash: bytes32 = self.rounds[round].finalHash
    if self.attestedHash[round][account] == finalHash:
        for i: uint256 in range(self.rounds[round].attestationCount, bound=MAX_ATTESTATIONS):
            if self.attestations[round][i].validator == account:
                owed += (total - contributorPool) * self.attestations[round][i].stake // self.attestedStake[round][finalHash]
                break
    return owed - self.shortfall[round][account]


@external
@view
def getCommit(round: uint256, index: uint256) -> Commit:
    assert index < self.rounds[round].commitCount, "getCommit: no such commit"
    return self.commits[round][index]


@external
@view
def getCommitters(round: uint256) -> DynArray[address, MAX_PARTICIPANTS]:
    """The committers of `round` in commit order (a skipped round includes none: see getRound().skipped)."""
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
